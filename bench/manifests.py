"""Manifest GET and HEAD by tag, direct and through the proxy: request rate at 8 and 64
connections, and the latency the proxy adds at 1 and 8."""

from __future__ import annotations

from dataclasses import dataclass

from bench.content import session
from bench.load import request_rate
from bench.procfs import CpuMeter
from bench.report import Row, Target
from bench.stack import Plan, Stack
from bench.stats import Samples, medians
from proxy.devstack.oci_client import MANIFEST, push_image

SCENARIO = "manifests"
REPO = "bench/app"
RATE_TARGET = Target("ratio", ">=", 0.85)
ADDED_TARGET = Target("added", "<", 1.0)


@dataclass(frozen=True)
class Case:
    method: str
    connections: int

    @property
    def label(self) -> str:
        return f"manifest {self.method}, {self.connections} conn"


CASES = tuple(Case(m, c) for m in ("GET", "HEAD") for c in (1, 8, 64))


@dataclass
class _Measured:
    rate: list[float]
    p50: list[float]
    side: list[dict[str, float]]


async def run(stack: Stack, plan: Plan) -> list[Row]:
    proxy = stack.proxy("passthrough")  # embedded index, default flags
    async with session() as http:
        await push_image(http, stack.registry.url, REPO, "v1")
    bases = {"direct": stack.registry.url, "proxy": proxy.url}
    pids = {"direct": stack.pids(), "proxy": stack.pids(proxy)}
    results = {(case, side): _Measured([], [], []) for case in CASES for side in bases}

    async def measure(case: Case, side: str, seconds: float, keep: bool = True) -> None:
        meter = CpuMeter(pids[side])
        async with meter.measuring():
            load = await request_rate(
                f"{bases[side]}/v2/{REPO}/manifests/v1",
                connections=case.connections,
                seconds=seconds,
                method=case.method,
                headers={"Accept": MANIFEST},
            )
        if not keep:
            return
        measured = results[(case, side)]
        measured.rate.append(load.rate)
        measured.p50.append(load.p50_ms)
        measured.side.append(
            {
                **meter.shares,
                "client_cpu": load.client_cpu,
                "p50_ms": load.p50_ms,
                "p99_ms": load.p99_ms,
            }
        )

    if plan.warm_up:  # connection pools, the proxy's 64 upstream connections
        for side in bases:
            await measure(Case("GET", 64), side, 1.0, keep=False)
    for n in range(plan.rounds):
        print(f"  manifests: round {n + 1}/{plan.rounds}", flush=True)
        for case in CASES:
            for side in bases:
                await measure(case, side, plan.seconds)
    return [row for case in CASES for row in _rows(case, results)]


def _rows(case: Case, results: dict[tuple[Case, str], _Measured]) -> list[Row]:
    direct, proxy = results[(case, "direct")], results[(case, "proxy")]
    extra = {
        **{f"direct_{k}": v for k, v in medians(direct.side).items()},
        **medians(proxy.side),
    }
    rows = []
    if case.connections > 1:
        rows.append(
            Row(
                SCENARIO,
                f"{case.label}, rate",
                "req/s",
                Samples.of(proxy.rate),
                Samples.of(direct.rate),
                RATE_TARGET,
                extra,
            )
        )
    if case.connections < 64:
        rows.append(
            Row(
                SCENARIO,
                f"{case.label}, p50 latency",
                "ms",
                Samples.of(proxy.p50),
                Samples.of(direct.p50),
                ADDED_TARGET,
                extra,
            )
        )
    return rows
