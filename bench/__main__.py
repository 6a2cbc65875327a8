"""`python -m bench`: each scenario direct and through the proxy, interleaved over several
rounds, against a real registry and Redis on this machine; a table of medians and ratios, and
JSON. Only 127.0.0.1 is ever contacted, and every run is bounded."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    attach,
    blobs,
    hotpath,
    hotpath_slow,
    large,
    manifests,
    redis_ha,
    referrers,
    reindex,
    workers,
)
from bench.report import Row, table, write_json
from bench.stack import Plan, Stack

Scenario = Callable[[Stack, Plan], Awaitable[list[Row]]]
SCENARIOS: dict[str, Scenario] = {
    blobs.SCENARIO: blobs.run,
    manifests.SCENARIO: manifests.run,
    hotpath.SCENARIO: hotpath.run,
    hotpath_slow.SCENARIO: hotpath_slow.run,
    workers.SCENARIO: workers.run,
    referrers.SCENARIO: referrers.run,
    attach.SCENARIO: attach.run,
    large.SCENARIO: large.run,
    reindex.SCENARIO: reindex.run,
    redis_ha.SCENARIO: redis_ha.run,
}
DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def _version(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "registry": _version("/usr/bin/docker-registry", "--version"),
        "redis": _version("redis-server", "--version"),
        "load_average": os.getloadavg(),
    }


async def run_all(chosen: list[str], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="referrers-bench-") as tmp,
        Stack.running(Path(tmp)) as stack,
    ):
        for name in chosen:
            print(f"bench: {name}", flush=True)
            started = time.monotonic()
            rows += await SCENARIOS[name](stack, plan)
            print(f"bench: {name} done in {time.monotonic() - started:.0f} s", flush=True)
    return rows


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {sorted(unknown)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument(
        "--only",
        type=_scenarios,
        default=list(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    make = Plan.quick if args.quick else Plan.full
    plan = make() if args.rounds is None else make(args.rounds)
    before = machine()
    started = datetime.now(UTC)
    rows = asyncio.run(run_all(args.only, plan))
    about = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "quick": args.quick,
        "rounds": plan.rounds,
        "machine": before,
        "load_average_after": os.getloadavg(),
    }
    write_json(args.json, rows, about)
    print(
        f"\n{before['cores']} cores ({before['cpu']}), load average before"
        f" {before['load_average']}, after {about['load_average_after']}"
    )
    print(table(rows))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
