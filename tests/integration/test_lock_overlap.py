"""Two writers of one tag-schema index at once: what a lock lost in a failover (to a replica that
never got it) costs. Both render the index from the index under what each takes for the lock,
but not at the same moment: the copy can miss a referrer for a while, the index never does, and
the writer whose lock was gone finds out at release and writes again."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from proxy.devstack.oci_client import (
    artifact_manifest,
    legacy_tag,
    listed_referrers,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry
from proxy.index import keys
from tests.conftest import StartProxy
from tests.harness.fault_relay import running_relay

SLOW_TAG_WRITE = 1.5


async def test_a_second_writer_in_a_lost_lock_writes_other_content_until_the_first_retries(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    subject = await push_subject_image(http, registry.url, repo)
    tag = legacy_tag(subject)
    first, second, third = [artifact_manifest(subject, annotations={"n": str(n)}) for n in range(3)]
    async with running_relay(registry.url) as (relay, relayed):
        slow = await start_proxy(relayed, redis_url=redis_server.url)
        fast = await start_proxy(registry.url, redis_url=redis_server.url)
        assert (await push_manifest(http, fast, repo, first)).status == 201
        _, listed, _ = await settled_tag_index(http, registry.url, repo, subject, [sha256(first)])
        assert [d["digest"] for d in listed] == [sha256(first)]

        def slow_tag_put(request: web.Request) -> bool:
            return request.method == "PUT" and request.path.endswith(f"/manifests/{tag}")

        relay.delay(slow_tag_put, SLOW_TAG_WRITE)
        assert (await push_manifest(http, slow, repo, second)).status == 201
        deadline = time.monotonic() + 10
        while not any(seen.startswith("PUT") and seen.endswith(tag) for seen in relay.seen):
            assert time.monotonic() < deadline, relay.seen
            await asyncio.sleep(0.01)
        # The slow writer rendered [first, second] and its PUT is on the way. Its lock vanishes,
        # as on a newly promoted replica that never got it, and a second writer gets in.
        client = aioredis.Redis.from_url(redis_server.url)
        assert await client.delete(keys.subject_lock(repo, sha256(subject))) == 1
        await client.aclose()
        assert (await push_manifest(http, fast, repo, third)).status == 201
        everything = [sha256(first), sha256(second), sha256(third)]
        _, listed, _ = await settled_tag_index(http, registry.url, repo, subject, everything)
        assert [d["digest"] for d in listed] == everything, "the second writer's copy"
        # The first writer's PUT lands after it, with what it rendered before `third` came.
        _, listed, _ = await settled_tag_index(
            http, registry.url, repo, subject, everything[:2], within=SLOW_TAG_WRITE + 2
        )
        assert [d["digest"] for d in listed] == everything[:2], "not the same content"
        for proxy in (fast, slow):
            assert sorted(await listed_referrers(http, proxy, repo, subject)) == sorted(everything)
        # Its lock was not its own at release: the write failed and is retried, from the index.
        _, listed, _ = await settled_tag_index(http, registry.url, repo, subject, everything)
        assert [d["digest"] for d in listed] == everything, "healed by the retry"
