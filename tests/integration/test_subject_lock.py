"""The Redis subject lock outlives its holder's slowest upstream call: two replicas never rewrite
one tag-schema index at once, however slow the registry (timings scaled down: a lock of 0.4 s,
a tag write the relay holds for 1.2 s)."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.devstack.oci_client import (
    artifact_manifest,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry
from proxy.index import redis as redis_index
from tests.conftest import StartProxy
from tests.harness.fault_relay import running_relay

LOCK_SECONDS = 0.4
SLOW_TAG_WRITE = 1.2


async def test_two_replicas_never_write_the_tag_at_once(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_index, "LOCK_SECONDS", LOCK_SECONDS)
    subject = await push_subject_image(http, registry.url, repo)
    tag = sha256(subject).replace(":", "-")
    async with running_relay(registry.url) as (relay, url):
        relay.delay(
            lambda r: r.method == "PUT" and r.path.endswith(f"/manifests/{tag}"), SLOW_TAG_WRITE
        )
        first, second = [await start_proxy(url, redis_url=redis_server.url) for _ in range(2)]
        referrers = [artifact_manifest(subject, annotations={"n": str(n)}) for n in range(2)]
        answers = await asyncio.gather(
            push_manifest(http, first, repo, referrers[0]),
            push_manifest(http, second, repo, referrers[1]),
        )
        assert [answer.status for answer in answers] == [201, 201]
        # Each replica writes the tag behind its attach, through the slow relay.
        expected = sorted(sha256(r) for r in referrers)
        _, listed, _ = await settled_tag_index(
            http, registry.url, repo, subject, expected, any_order=True
        )
    assert sorted(d["digest"] for d in listed) == expected


async def test_a_held_lock_is_let_go_however_its_renewal_ends(
    redis_server: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the growing-list soak: a renewal cancelled while redis-py ran its command could
    lose the cancellation, keep renewing, and leave its holder waiting forever, so the subject
    stayed locked and every later write to it gave up. Scaled down: locks of 0.3 s renewed
    every 0.1 s, held up to 0.4 s, 300 holds over 20 subjects (before the fix, about a quarter
    never came back)."""
    monkeypatch.setattr(redis_index, "LOCK_SECONDS", 0.3)
    index = redis_index.RedisIndex(aioredis.Redis.from_url(redis_server.url))
    rng = random.Random(7)
    holds = [(f"sha256:{n % 20:064x}", rng.random() * 0.4) for n in range(300)]
    stuck = 0

    async def hold(subject: str, seconds: float) -> None:
        nonlocal stuck
        try:
            async with asyncio.timeout(10):
                async with index.subject_lock("t/renewal", subject):
                    await asyncio.sleep(seconds)
        except TimeoutError:
            stuck += 1
        except redis_index.IndexUnavailable:
            pass  # renewed too late on a loaded machine: the holder is told, it does not hang

    try:
        await asyncio.gather(*(hold(subject, seconds) for subject, seconds in holds))
    finally:
        await index.close()
    assert stuck == 0
