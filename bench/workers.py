"""`--workers` (issue 16): manifest GET by digest from the memory cache, where the proxy alone is
the limit, with one worker or two, the proxy pinned to one core or allowed both (`taskset -a`
style: every thread of its processes). On this 2-core machine the registry and the load tool
share the cores with it; on a bigger host this is what scales a single pod."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.content import session
from bench.image import ACCEPT, push_small_image
from bench.load import request_rate
from bench.procfs import CpuMeter, children, per_request
from bench.report import Row
from bench.stack import Plan, Stack
from bench.stats import Samples, medians

SCENARIO = "workers"
REPO = "bench/workers"
WORKERS = (1, 2)
CORES = (frozenset({0}), frozenset({0, 1}))


@dataclass
class _Rates:
    rate: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)


def serving_pids(pid: int) -> list[int]:
    """`pid`, and with --workers its workers (not multiprocessing's resource tracker, which
    only waits)."""
    workers = [
        child
        for child in children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return [pid, *workers]


def pin(pids: list[int], cores: frozenset[int]) -> None:
    """Every thread of each process on `cores`."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cores)


def until_listening(log: Path, workers: int, within: float = 30.0) -> None:
    """Every worker has bound the port: the first one opening it is not enough."""
    wanted = [f"worker {n}/{workers} listening" for n in range(1, workers + 1)]
    deadline = time.monotonic() + within
    while not all(line in log.read_text() for line in wanted):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every one of {workers} workers listens: see {log}")
        time.sleep(0.05)


def _label(workers: int, cores: frozenset[int]) -> str:
    return f"--workers {workers}, proxy on {len(cores)} core{'s' if len(cores) > 1 else ''}"


async def run(stack: Stack, plan: Plan) -> list[Row]:
    usable = os.sched_getaffinity(0)
    placements = [cores for cores in CORES if cores <= usable]
    proxies = {n: stack.redis_proxy(f"workers-{n}", "--workers", str(n)) for n in WORKERS}
    port = proxies[2].url.rsplit(":", 1)[1]
    until_listening(stack.workdir / "proxy-workers-2" / f"proxy-{port}.log", 2)
    async with session() as http:
        digest = await push_small_image(http, stack.registry.url, REPO, "v1")
    path = f"/v2/{REPO}/manifests/{digest}"

    async def measure(base: str, pids: dict[str, int], into: _Rates | None) -> None:
        meter = CpuMeter(pids)
        async with meter.measuring():
            load = await request_rate(
                base + path, connections=8, seconds=plan.seconds, headers={"Accept": ACCEPT}
            )
        if into is not None:
            shares = dict(meter.shares)
            # The proxy's processes as one: the supervisor and every worker.
            proxy = sum(shares.pop(name) for name in list(shares) if name.startswith("proxy"))
            into.rate.append(load.rate)
            into.cpu.append(per_request({**shares, "proxy_cpu": proxy}, load.rate))

    direct = _Rates()
    measured = {(n, cores): _Rates() for n in WORKERS for cores in placements}
    registry = {"registry": stack.registry.process.pid}

    async def one_round(keep: bool) -> None:
        await measure(stack.registry.url, registry, direct if keep else None)
        for (workers, cores), into in measured.items():
            pids = serving_pids(proxies[workers].process.pid)
            pin(pids, cores)
            watched = {**registry, **{f"proxy{i}": pid for i, pid in enumerate(pids)}}
            await measure(proxies[workers].url, watched, into if keep else None)

    if plan.warm_up:  # also fills each worker's own cache
        await one_round(keep=False)
    for n in range(plan.rounds):
        print(f"  {SCENARIO}: round {n + 1}/{plan.rounds}", flush=True)
        await one_round(keep=True)
    return [
        Row(
            SCENARIO,
            f"manifest GET by digest from the cache, 8 conn, rate: {_label(workers, cores)}",
            "req/s",
            Samples.of(into.rate),
            Samples.of(direct.rate),
            None,
            medians(into.cpu),
        )
        for (workers, cores), into in measured.items()
    ]
