"""The hot path (issue 16): manifest GET (and HEAD) by digest direct, through the proxy without
and with its manifest cache, and through the nginx front; referrers GET and blob GET through the
front against the proxy.
Every row carries the CPU each process spent per request (ms), measured in the same run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.content import attach, push_big_blob, session
from bench.image import push_blob
from bench.load import download, request_rate
from bench.procfs import CpuMeter, children, per_request
from bench.report import Row, Target
from bench.stack import Plan, Stack, size_label
from bench.stats import Samples, medians
from proxy.devstack.front import running_front
from proxy.devstack.oci_client import ACCEPT_MANIFESTS, push_image, sha256

SCENARIO = "hotpath"
REPO = "bench/hot"
SIDES = ("direct", "proxy", "proxy+cache", "front")
TARGETS = {
    "proxy": Target("ratio", ">=", 0.85),
    "proxy+cache": Target("ratio", ">=", 1.5),
    "front": Target("ratio", ">=", 0.9),
}
FRONT_ADDED = Target("added", "<", 0.3)
REFERRERS = 10  # on the subject whose referrers are listed through the front and the proxy


@dataclass
class _Side:
    rate: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)


@contextmanager
def _front(stack: Stack, proxy_url: str) -> Iterator[tuple[str, int]]:
    """nginx in front of the registry and `proxy_url`; its URL and its (single) worker's pid."""
    registry = stack.registry.url.split("//", 1)[1]
    with running_front(stack.workdir / "front", registry, proxy_url.split("//", 1)[1]) as front:
        (worker,) = children(front.process.pid)
        yield front.url, worker


async def run(stack: Stack, plan: Plan) -> list[Row]:
    plain = stack.proxy("hot-plain", "--manifest-cache", "off")
    cached = stack.proxy("hot-cached")  # the default: memory
    async with session() as http:
        image = await push_image(http, stack.registry.url, REPO, "v1")
        blob = await push_big_blob(http, stack.registry.url, REPO, plan.blob_bytes)
        await push_blob(http, stack.registry.url, REPO, b"{}")  # the referrers' empty config
        await attach(http, plain.url, REPO, image, REFERRERS, plan.setup_concurrency)
    digest = sha256(image)
    path = f"/v2/{REPO}/manifests/{digest}"
    with _front(stack, plain.url) as (front_url, worker):
        bases = {
            "direct": stack.registry.url,
            "proxy": plain.url,
            "proxy+cache": cached.url,
            "front": front_url,
        }
        pids = {
            "direct": stack.pids(),
            "proxy": stack.pids(plain),
            "proxy+cache": stack.pids(cached),
            "front": {**stack.pids(plain), "front": worker},  # the proxy: referrers only
        }
        rates = {side: _Side() for side in SIDES}
        heads = {side: _Side() for side in SIDES}
        latency = {side: _Side() for side in SIDES}
        referrers = {side: _Side() for side in ("proxy", "front")}

        async def measure(
            side: str,
            connections: int,
            into: _Side,
            keep: bool = True,
            target: str = path,
            method: str = "GET",
        ) -> None:
            meter = CpuMeter(pids[side])
            async with meter.measuring():
                load = await request_rate(
                    bases[side] + target,
                    connections=connections,
                    seconds=plan.seconds,
                    method=method,
                    headers={"Accept": ACCEPT_MANIFESTS},
                )
            if keep:
                into.rate.append(load.rate)
                into.p50.append(load.p50_ms)
                into.cpu.append(per_request(meter.shares, load.rate))

        blobs: dict[str, list[float]] = {"proxy": [], "front": []}
        blob_cpu: dict[str, list[dict[str, float]]] = {"proxy": [], "front": []}
        blob_pids = {"proxy": stack.pids(plain), "front": {**stack.pids(), "front": worker}}
        blob_bases = {"proxy": plain.url, "front": front_url}
        if plan.warm_up:
            for side in SIDES:
                await measure(side, 8, _Side(), keep=False)
        for n in range(plan.rounds):
            print(f"  hotpath: round {n + 1}/{plan.rounds}", flush=True)
            for side in SIDES:
                await measure(side, 8, rates[side])
                await measure(side, 8, heads[side], method="HEAD")
                await measure(side, 1, latency[side])
            for side in ("proxy", "front"):
                await measure(side, 8, referrers[side], target=f"/v2/{REPO}/referrers/{digest}")
            for side in ("proxy", "front"):
                meter = CpuMeter(blob_pids[side])
                async with meter.measuring():
                    moved = await download(
                        f"{blob_bases[side]}/v2/{REPO}/blobs/{blob}", plan.blob_bytes
                    )
                blobs[side].append(moved.bytes_per_second / 1e6)
                blob_cpu[side].append(meter.shares)
    rows = []
    for side in SIDES[1:]:
        for method, measured in (("GET", rates), ("HEAD", heads)):
            direct = measured["direct"]
            rows.append(
                Row(
                    SCENARIO,
                    f"manifest {method} by digest, 8 conn, rate: {side}",
                    "req/s",
                    Samples.of(measured[side].rate),
                    Samples.of(direct.rate),
                    TARGETS[side],
                    {
                        **{f"direct_{k}": v for k, v in medians(direct.cpu).items()},
                        **medians(measured[side].cpu),
                    },
                )
            )
        rows.append(
            Row(
                SCENARIO,
                f"manifest GET by digest, 1 conn, p50 latency: {side}",
                "ms",
                Samples.of(latency[side].p50),
                Samples.of(latency["direct"].p50),
                FRONT_ADDED if side == "front" else None,
                medians(latency[side].cpu),
            )
        )
    rows.append(
        Row(
            SCENARIO,
            f"referrers GET, {REFERRERS} referrers, 8 conn, rate: front vs proxy",
            "req/s",
            Samples.of(referrers["front"].rate),
            Samples.of(referrers["proxy"].rate),
            Target("ratio", ">=", 0.9),
            {
                **{f"proxy_{k}": v for k, v in medians(referrers["proxy"].cpu).items()},
                **medians(referrers["front"].cpu),
            },
        )
    )
    rows.append(
        Row(
            SCENARIO,
            f"blob GET {size_label(plan.blob_bytes)}: front vs proxy",
            "MB/s",
            Samples.of(blobs["front"]),
            Samples.of(blobs["proxy"]),
            Target("ratio", ">=", 1.0),
            {
                **{f"proxy_{k}": v for k, v in medians(blob_cpu["proxy"]).items()},
                **medians(blob_cpu["front"]),
            },
        )
    )
    return rows
