"""The hot path in front of a registry that is far away (issue 16): a loopback relay adds ~20 ms
to every request it passes, as a registry in another region would. Manifest GET by digest, one
connection, p50: through the relay alone, through the proxy with its cache off (every pull pays
the trip), and through the proxy with its memory cache (only the first pull does)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.content import session
from bench.image import ACCEPT, push_small_image
from bench.load import request_rate
from bench.procfs import CpuMeter, per_request
from bench.report import Row, Target
from bench.slow_relay import running_relay
from bench.stack import Plan, Stack
from bench.stats import Samples, medians

SCENARIO = "hotpath-slow"
REPO = "bench/far"
DELAY = 0.020  # seconds the relay waits before passing a request on
SIDES = ("relay", "proxy", "proxy+cache")
# A cached pull never reaches the relay: it should cost what the proxy alone costs.
CACHED = Target("value", "<", 1.0)


@dataclass
class _Side:
    p50: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)


async def run(stack: Stack, plan: Plan) -> list[Row]:
    relay = stack.enter(running_relay(stack.registry.url, DELAY, stack.workdir / "relay.log"))
    plain = stack.proxy("far-plain", "--manifest-cache", "off", upstream=relay.url)
    cached = stack.proxy("far-cached", upstream=relay.url)
    async with session() as http:
        digest = await push_small_image(http, stack.registry.url, REPO, "v1")
        for base in (plain.url, cached.url):  # the cache's first pull, and the pull grant
            async with http.get(
                f"{base}/v2/{REPO}/manifests/{digest}", headers={"Accept": ACCEPT}
            ) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"GET through {base} answered {answer.status}")
    bases = {"relay": relay.url, "proxy": plain.url, "proxy+cache": cached.url}
    watched = {"registry": stack.registry.process.pid, "relay": relay.process.pid}
    pids = {
        "relay": watched,
        "proxy": {**watched, "proxy": plain.process.pid},
        "proxy+cache": {**watched, "proxy": cached.process.pid},
    }
    sides = {side: _Side() for side in SIDES}
    for n in range(plan.rounds):
        print(f"  {SCENARIO}: round {n + 1}/{plan.rounds}", flush=True)
        for side in SIDES:
            meter = CpuMeter(pids[side])
            async with meter.measuring():
                load = await request_rate(
                    f"{bases[side]}/v2/{REPO}/manifests/{digest}",
                    connections=1,
                    seconds=plan.seconds,
                    headers={"Accept": ACCEPT},
                )
            sides[side].p50.append(load.p50_ms)
            sides[side].cpu.append(per_request(meter.shares, load.rate))
    return [
        Row(
            SCENARIO,
            f"manifest GET by digest, upstream {DELAY * 1000:.0f} ms away, 1 conn, p50: {side}"
            " vs the relay alone",
            "ms",
            Samples.of(sides[side].p50),
            Samples.of(sides["relay"].p50),
            CACHED if side == "proxy+cache" else None,
            medians(sides[side].cpu),
        )
        for side in SIDES[1:]
    ]
