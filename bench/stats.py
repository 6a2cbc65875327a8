"""Medians over interleaved rounds and ratios of medians: on a shared 2-core machine one run
says little, and a ratio taken within one run cancels most of what the neighbours do."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Samples:
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Samples:
        kept = tuple(float(v) for v in values)
        if not kept:
            raise ValueError("no samples")
        return cls(kept)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "samples": list(self.values),
        }


def ratio(measured: Samples, baseline: Samples) -> float | None:
    """Median over median; None when the baseline's median is zero."""
    if baseline.median == 0:
        return None
    return measured.median / baseline.median


def medians(rounds: Iterable[dict[str, float]]) -> dict[str, float]:
    """Per-key medians of per-round side measurements (CPU shares, percentiles...)."""
    collected: dict[str, list[float]] = {}
    for one in rounds:
        for key, value in one.items():
            collected.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in collected.items()}
