"""One contract for every IndexStore: the embedded one and Redis behave the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from proxy.index import EmbeddedIndex, IndexStore, RedisIndex
from proxy.index.base import TagSync
from proxy.manifest import Referrer
from tests.harness.processes import Redis

SUBJECT = "sha256:" + "5" * 64
OTHER_SUBJECT = "sha256:" + "6" * 64
SBOM, SIG = "application/spdx+json", "application/vnd.example.sig"


def referrer(n: int, artifact_type: str | None = SBOM, subject: str = SUBJECT) -> Referrer:
    digest = f"sha256:{n:064x}"
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest}
    return Referrer(subject, digest, artifact_type, orjson.dumps(descriptor))


def digests(descriptors: list[bytes]) -> list[str]:
    return [orjson.loads(d)["digest"] for d in descriptors]


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IndexStore]:
    if request.param == "embedded":
        yield EmbeddedIndex()
        return
    redis_server: Redis = request.getfixturevalue("redis_server")
    flusher = aioredis.Redis.from_url(redis_server.url)
    await flusher.flushdb()
    await flusher.aclose()
    index = RedisIndex.from_url(redis_server.url)
    yield index
    await index.close()


async def walk(store: IndexStore, repo: str, types: list[str], limit: int) -> list[str]:
    seen, after = [], 0
    for _ in range(1000):
        page = await store.page(repo, SUBJECT, types, after, limit)
        assert len(page.descriptors) <= limit
        seen += digests(page.descriptors)
        if page.next_after is None:
            return seen
        after = page.next_after
    raise AssertionError("pagination did not end")


async def test_empty_answers(store: IndexStore) -> None:
    page = await store.page("nothing/here", SUBJECT, [], 0, 10)
    assert (page.descriptors, page.next_after) == ([], None)
    assert (await store.page("nothing/here", SUBJECT, [SBOM], 0, 10)).descriptors == []


async def test_add_is_idempotent_and_keeps_the_exact_bytes(store: IndexStore) -> None:
    one, two = referrer(1), referrer(2)
    for r in (one, two, one):
        await store.add("app", r)
    page = await store.page("app", SUBJECT, [], 0, 10)
    assert page.descriptors == [one.descriptor, two.descriptor]


async def test_repositories_and_subjects_are_isolated(store: IndexStore) -> None:
    await store.add("a", referrer(1))
    await store.add("a/b", referrer(2))
    await store.add("a", referrer(3, subject=OTHER_SUBJECT))
    assert digests((await store.page("a", SUBJECT, [], 0, 10)).descriptors) == [referrer(1).digest]
    assert digests((await store.page("a/b", SUBJECT, [], 0, 10)).descriptors) == [
        referrer(2).digest
    ]
    assert digests((await store.page("a", OTHER_SUBJECT, [], 0, 10)).descriptors) == [
        referrer(3).digest
    ]
    assert (await store.page("b", SUBJECT, [], 0, 10)).descriptors == []


async def test_artifact_type_filters(store: IndexStore) -> None:
    await store.add("app", referrer(1, SBOM))
    await store.add("app", referrer(2, SIG))
    await store.add("app", referrer(3, None))
    await store.add("app", referrer(4, SBOM))
    assert await walk(store, "app", [SBOM], 10) == [referrer(1).digest, referrer(4).digest]
    assert await walk(store, "app", [SIG, SBOM], 10) == [referrer(n).digest for n in (1, 2, 4)]
    assert await walk(store, "app", ["application/none"], 10) == []
    assert len(await walk(store, "app", [], 10)) == 4


async def test_remove_forgets_in_every_view(store: IndexStore) -> None:
    await store.add("app", referrer(1, SBOM))
    await store.add("app", referrer(2, SBOM))
    await store.remove("app", referrer(1).digest)
    await store.remove("app", "sha256:" + "f" * 64)
    await store.remove("elsewhere", referrer(2).digest)
    assert await walk(store, "app", [], 10) == [referrer(2).digest]
    assert await walk(store, "app", [SBOM], 10) == [referrer(2).digest]
    await store.add("app", referrer(1, SBOM))
    assert await walk(store, "app", [], 10) == [referrer(2).digest, referrer(1).digest]


async def test_pages_are_complete_while_referrers_arrive_and_leave(store: IndexStore) -> None:
    for n in range(250):
        await store.add("app", referrer(n, SBOM if n % 2 else SIG))
    seen, after, pages = [], 0, 0
    while True:
        page = await store.page("app", SUBJECT, [], after, 100)
        seen += digests(page.descriptors)
        pages += 1
        if pages == 1:
            await store.add("app", referrer(1000))
            await store.remove("app", referrer(150).digest)
        if page.next_after is None:
            break
        after = page.next_after
    expected = [referrer(n).digest for n in range(250) if n != 150] + [referrer(1000).digest]
    assert seen == expected
    assert pages == 3
    assert await walk(store, "app", [SIG, SBOM], 7) == expected


async def test_tag_sync_marker(store: IndexStore) -> None:
    assert await store.tag_sync("app", SUBJECT) is None
    mark = TagSync("sha256:" + "9" * 64, time.time())
    await store.set_tag_sync("app", SUBJECT, mark)
    assert await store.tag_sync("app", SUBJECT) == mark
    assert await store.tag_sync("app/x", SUBJECT) is None


async def test_subject_lock_serializes_one_subject_only(store: IndexStore) -> None:
    inside: list[str] = []
    overlap = False

    async def hold(subject: str, name: str) -> None:
        nonlocal overlap
        async with store.subject_lock("app", subject):
            if any(entry.startswith(subject) for entry in inside):
                overlap = True
            inside.append(f"{subject}:{name}")
            await asyncio.sleep(0.05)
            inside.remove(f"{subject}:{name}")

    started = time.monotonic()
    await asyncio.gather(*(hold(SUBJECT, str(n)) for n in range(4)), hold(OTHER_SUBJECT, "x"))
    assert not overlap
    assert time.monotonic() - started >= 0.2, "four holders of one subject took turns"
