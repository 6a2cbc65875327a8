"""`python -m bench --quick` end to end: every scenario reports, with numbers that make sense.
No timing is asserted: a shared CI machine is far too noisy for that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.__main__ import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
POSITIVE_UNITS = {"MB/s", "req/s", "ms", "MiB", "referrers/s", "manifests/s"}


def test_quick_bench_reports_every_scenario(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = orjson.loads(report.read_bytes())
    rows = document["rows"]
    assert {row["scenario"] for row in rows} == set(SCENARIOS)
    assert document["machine"]["cores"] >= 1
    for row in rows:
        for side in ("baseline", "proxy"):
            samples = row[side]
            if samples is None:
                continue
            assert samples["min"] <= samples["median"] <= samples["max"], row
            if row["unit"] in POSITIVE_UNITS:
                assert samples["min"] > 0, row
        if row["ratio"] is not None:
            expected = row["proxy"]["median"] / row["baseline"]["median"]
            assert row["ratio"] == pytest.approx(expected), row
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row
    lost = [row for row in rows if row["unit"] == "referrers"]
    assert lost, "the attach scenario reports lost referrers"
    assert all(row["proxy"]["max"] == 0 for row in lost), lost
    assert "| scenario" in done.stdout
