"""`referrers-proxy reindex` into an empty Redis database, as an operator runs it after losing
Redis: manifests read per second (process start-up included)."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import redis.asyncio as aioredis

from bench.content import attach, session
from bench.report import Row
from bench.stack import Plan, Stack
from bench.stats import Samples
from proxy.devstack.oci_client import push_subject_image

SCENARIO = "reindex"
FRESH_DB = 15  # the proxies use database 0
_SUMMARY = re.compile(
    r"manifests read (\d+), referrers indexed (\d+), keep tags added \d+, errors (\d+)"
)


async def run(stack: Stack, plan: Plan) -> list[Row]:
    proxy = stack.redis_proxy("redis")  # --fallback-tags write: tag-schema indexes list them all
    repos = [f"bench/reindex-{n}" for n in range(plan.reindex_repos)]
    print(f"  reindex: {len(repos)} repositories x {plan.reindex_referrers} referrers", flush=True)
    async with session(plan.setup_concurrency) as http:
        for repo in repos:
            subject = await push_subject_image(http, proxy.url, repo)
            await attach(
                http, proxy.url, repo, subject, plan.reindex_referrers, plan.setup_concurrency
            )
    fresh = stack.redis_url(FRESH_DB)
    argv = [sys.executable, "-m", "proxy", "reindex", "--upstream", stack.registry.url]
    argv += ["--redis-url", fresh, *(arg for repo in repos for arg in ("--repository", repo))]
    rates: list[float] = []
    manifests = 0
    for n in range(plan.rounds):
        print(f"  reindex: round {n + 1}/{plan.rounds}", flush=True)
        client = aioredis.Redis.from_url(fresh)
        await client.flushdb()
        await client.aclose()
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        elapsed = time.monotonic() - started
        found = _SUMMARY.search(out.decode())
        if process.returncode != 0 or found is None or found.group(3) != "0":
            raise RuntimeError(f"reindex failed ({process.returncode}): {out!r} {err[-500:]!r}")
        manifests, referrers = int(found.group(1)), int(found.group(2))
        if referrers != len(repos) * plan.reindex_referrers:
            raise RuntimeError(f"reindex found {referrers} referrers: {out!r}")
        rates.append(manifests / elapsed)
    return [
        Row(
            SCENARIO,
            f"reindex {len(repos)} repositories, {manifests:,} manifests",
            "manifests/s",
            Samples.of(rates),
        )
    ]
