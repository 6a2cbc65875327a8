"""Attach cost at any list length: one attach at a time through the proxy (Redis index, keep tags
on, the tag-schema index written behind) to a subject that already has `large_referrers` (a
legacy client's tag-schema index near the 4 MiB limit plus referrers attached through the proxy),
against the same on a fresh subject, in the same run."""

from __future__ import annotations

import time

import aiohttp

from bench.content import session
from bench.procfs import CpuMeter
from bench.report import Row, Target
from bench.stack import Plan, Stack
from bench.stats import Samples
from proxy.devstack.large_subject import push_all, seed_legacy_index
from proxy.devstack.oci_client import artifact_manifest, push_manifest, push_subject_image

SCENARIO = "large"
MEASURED = 30  # sequential attaches timed per subject and round


async def _timed_attaches(
    http: aiohttp.ClientSession, proxy: str, repo: str, subject: bytes, tag: str
) -> list[float]:
    """Milliseconds per attach, one at a time."""
    took = []
    for n in range(MEASURED):
        body = artifact_manifest(subject, annotations={"measured": f"{tag}-{n}"})
        started = time.perf_counter()
        answer = await push_manifest(http, proxy, repo, body)
        took.append((time.perf_counter() - started) * 1000)
        if answer.status != 201:
            raise RuntimeError(f"attach to {repo} answered {answer.status}")
    return took


async def run(stack: Stack, plan: Plan) -> list[Row]:
    proxy = stack.redis_proxy("redis")
    big, fresh = [], []
    cpu: dict[str, list[float]] = {}
    async with session(32) as http:
        repo = "bench/large"
        subject = await push_subject_image(http, stack.registry.url, repo)
        legacy = await seed_legacy_index(
            http, stack.registry.url, repo, subject, most=plan.large_referrers // 2
        )
        ours = [
            artifact_manifest(subject, annotations={"seeded": str(n)})
            for n in range(plan.large_referrers - len(legacy.digests))
        ]
        started = time.monotonic()
        await push_all(http, proxy.url, repo, ours, concurrency=32)
        seeded = time.monotonic() - started
        print(
            f"  large: {len(legacy.digests)} legacy in {legacy.seconds:.0f} s, {len(ours)}"
            f" through the proxy in {seeded:.0f} s",
            flush=True,
        )
        for n in range(plan.rounds):
            print(f"  large: round {n + 1}/{plan.rounds}", flush=True)
            meter = CpuMeter(stack.pids(proxy, redis=True))
            async with meter.measuring():
                measured = time.monotonic()
                big += await _timed_attaches(http, proxy.url, repo, subject, f"r{n}")
                elapsed = time.monotonic() - measured
            for name, share in meter.shares.items():
                cpu.setdefault(f"{name}_ms_per_attach", []).append(
                    share * elapsed * 1000 / MEASURED
                )
            small = f"bench/large-fresh-{n}"
            fresh_subject = await push_subject_image(http, stack.registry.url, small)
            fresh += await _timed_attaches(http, proxy.url, small, fresh_subject, f"r{n}")
    return [
        Row(
            SCENARIO,
            f"attach p50 with {plan.large_referrers} referrers, vs a fresh subject",
            "ms",
            Samples.of(big),
            Samples.of(fresh),
            Target("ratio", "<=", 3.0),
            {
                "seed_through_proxy_per_s": len(ours) / seeded,
                **{name: Samples.of(values).median for name, values in cpu.items()},
            },
        )
    ]
