"""Rows of results, judged against their targets; printed as a Markdown table (it pastes into
the README as it is) and written as JSON for machines."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from bench.stats import Samples, ratio

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}
_SHOWN = {">=": "≥", "<=": "≤", "<": "<"}


@dataclass(frozen=True)
class Target:
    """`on` says what is judged: the ratio of medians, the proxy's median itself, or what the
    proxy adds to the baseline's median."""

    on: Literal["ratio", "value", "added"]
    op: Literal[">=", "<=", "<"]
    limit: float

    def describe(self, unit: str) -> str:
        shown = f"{_SHOWN[self.op]} {self.limit:g}"
        if self.on == "ratio":
            return f"ratio {shown}"
        return f"added {shown} {unit}" if self.on == "added" else f"{shown} {unit}"


@dataclass(frozen=True)
class Row:
    scenario: str  # the --only name that produced it
    name: str
    unit: str
    proxy: Samples
    baseline: Samples | None = None
    target: Target | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Proxy over baseline; not shown for rows judged on their own value."""
        if self.baseline is None or (self.target is not None and self.target.on == "value"):
            return None
        return ratio(self.proxy, self.baseline)

    @property
    def added(self) -> float | None:
        return None if self.baseline is None else self.proxy.median - self.baseline.median

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        judged = {"ratio": self.ratio, "added": self.added, "value": self.proxy.median}
        value = judged[self.target.on]
        return None if value is None else _OPS[self.target.op](value, self.target.limit)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "baseline": self.baseline.as_json() if self.baseline else None,
            "proxy": self.proxy.as_json(),
            "ratio": self.ratio,
            "added": self.added,
            "target": self.target.describe(self.unit) if self.target else None,
            "met": self.met,
            "extra": self.extra,
        }


def number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _spread(samples: Samples | None) -> str:
    if samples is None:
        return "–"
    if len(samples.values) == 1:
        return number(samples.median)
    return f"{number(samples.median)} ({number(samples.low)}–{number(samples.high)})"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    text = row.target.describe(row.unit)
    if row.target.on == "added" and row.added is not None:
        text += f": {row.added:+.2f}"
    return text


def cpu_per_request(row: Row) -> str:
    """The measured side's CPU per request by process (`registry_ms_per_req`, ...); the
    baseline's keys carry a prefix (`direct_registry_ms_per_req`) and are left to the JSON."""
    shown = [
        f"{key.removesuffix('_ms_per_req')} {value:.2f}"
        for key, value in row.extra.items()
        if key.endswith("_ms_per_req") and "_" not in key.removesuffix("_ms_per_req")
    ]
    return ", ".join(shown)


def table(rows: Sequence[Row]) -> str:
    header = (
        "scenario",
        "unit",
        "baseline median (min–max)",
        "proxy median (min–max)",
        "ratio",
        "target",
        "",
        "CPU ms/req",
    )
    lines = [
        (
            row.name,
            row.unit,
            _spread(row.baseline),
            _spread(row.proxy),
            "–" if row.ratio is None else f"{row.ratio:.2f}",
            _target(row),
            {True: "met", False: "**missed**", None: ""}[row.met],
            cpu_per_request(row),
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in (header, *lines)) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(header), rule, *(render(cells) for cells in lines)])


def write_json(path: Path, rows: Sequence[Row], about: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**about, "rows": [row.as_json() for row in rows]}
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
