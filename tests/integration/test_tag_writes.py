"""The registry's tag-schema index behind attaches (keep tags on, Redis index): attaches do not
wait for it and share its writes; a busy registry is retried, a refusal is not; a long list is
capped under the registry's manifest limit and never fails an attach; a listing read before a
delete brings nothing back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from yarl import URL

from proxy.config import Settings
from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    legacy_attach,
    legacy_tag,
    listed_referrers,
    push_image,
    push_manifest,
    push_subject_image,
    read_tag_index,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, running_proxy
from proxy.index import IndexStore, IndexUnavailable, keys, open_index
from proxy.index.base import Page, TagSync
from proxy.metrics import Metrics
from proxy.oci.manifest import inspect_manifest
from proxy.services import tag_writer
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import Answer, RegistryClient
from tests.conftest import StartProxy
from tests.harness.fault_relay import Canned, running_relay
from tests.integration.test_operations import Moved, moved_once, scrape, value
from tests.integration.test_reindex import run_reindex


def tag_request(method: str, subject: bytes) -> Callable[[web.Request], bool]:
    tag = legacy_tag(subject)
    return lambda r: r.method == method and r.path.endswith(f"/manifests/{tag}")


def first(n: int, matches: Callable[[web.Request], bool]) -> Callable[[web.Request], bool]:
    """Matches the first `n` requests that `matches` does."""
    counter = itertools.count()
    return lambda r: matches(r) and next(counter) < n


@dataclass
class InProcess:
    """A tag writer in this process over the real registry and Redis, with its PUTs counted."""

    store: IndexStore
    writer: TagIndexWriter
    puts: int = 0


@asynccontextmanager
async def in_process_writer(registry: Registry, redis_server: Redis) -> AsyncIterator[InProcess]:
    store = open_index(Settings(upstream=URL(registry.url), redis_url=redis_server.url))
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, URL(registry.url), 4 * 1024 * 1024)
        made = InProcess(store, TagIndexWriter(client, store, Metrics.create(), behind=False))
        put = client.put_manifest

        async def counted(*args: Any) -> Answer:
            made.puts += 1
            return await put(*args)

        client.put_manifest = counted  # type: ignore[method-assign]
        try:
            yield made
        finally:
            await store.close()


async def put_copy(
    http: aiohttp.ClientSession, registry: Registry, repo: str, subject: bytes, listed: list[Any]
) -> None:
    """What a legacy client writes as the subject's tag-schema index."""
    body = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed})
    put = await push_manifest(http, registry.url, repo, body, legacy_tag(subject), INDEX)
    assert put.status == 201


async def attach(http: aiohttp.ClientSession, proxy: str, repo: str, manifest: bytes) -> str:
    assert (await push_manifest(http, proxy, repo, manifest)).status == 201
    return sha256(manifest)


async def test_attaches_do_not_wait_for_the_tag_and_share_its_writes(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    image = await push_subject_image(http, registry.url, repo)
    async with running_relay(registry.url) as (relay, url):
        relay.delay(tag_request("PUT", image), 3.0)
        proxy = await start_proxy(url, redis_url=redis_server.url, tag_write_delay=0.2)
        manifests = [artifact_manifest(image, annotations={"n": str(n)}) for n in range(30)]
        attached = await asyncio.gather(*(attach(http, proxy, repo, m) for m in manifests))
        assert (await read_tag_index(http, registry.url, repo, image))[0] == 404, (
            "every attach was answered before the tag's first write could land"
        )
        arrived = await listed_referrers(http, proxy, repo, image)
        assert sorted(arrived) == sorted(attached)
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, arrived)
        assert [d["digest"] for d in listed] == arrived, "in the order they arrived"
        puts = [seen for seen in relay.seen if seen.startswith("PUT") and legacy_tag(image) in seen]
        assert 1 <= len(puts) <= 3, f"30 attaches, {len(puts)} writes of the tag"


def counted(result: str) -> Callable[[Moved], bool]:
    return lambda moved: moved("tag_writes_total", result=result) >= 1


async def test_a_busy_registry_is_retried_and_a_refusal_is_not(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tag_writer, "RETRY_SECONDS", (0.3,) * 4)
    image = await push_subject_image(http, registry.url, repo)
    async with running_relay(registry.url) as (relay, url):
        relay.answer(first(2, tag_request("PUT", image)), Canned(503))
        proxy = await start_proxy(url, redis_url=redis_server.url)
        before = await scrape(http, proxy)
        sbom = await attach(http, proxy, repo, artifact_manifest(image))
        assert (await settled_tag_index(http, registry.url, repo, image, [sbom]))[0] == 200
        retried = await moved_once(http, proxy, before, counted("written"))
        assert retried("tag_writes_total", result="retried") >= 2, "the two 503s at least"
        assert retried("tag_writes_total", result="written") >= 1

        relay.answer(tag_request("PUT", image), Canned(403))
        late = await attach(http, proxy, repo, artifact_manifest(image, annotations={"n": "2"}))
        refused = await moved_once(http, proxy, retried.after, counted("refused"))
        assert refused("tag_writes_total", result="refused") == 1
        assert refused("tag_writes_total", result="retried") == 0, "a refusal is final"
        assert [d["digest"] for d in (await read_tag_index(http, url, repo, image))[1]] == [sbom]
        assert await listed_referrers(http, proxy, repo, image) == [sbom, late], (
            "the proxy lists it all the same"
        )
        relay.clear()
        third = await attach(http, proxy, repo, artifact_manifest(image, annotations={"n": "3"}))
        everything = [sbom, late, third]
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, everything)
        assert [d["digest"] for d in listed] == everything, "the next change writes it all"


async def test_readiness_notes_failing_tag_writes(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tag_writer, "RETRY_SECONDS", (0.2,) * 50)
    image = await push_subject_image(http, registry.url, repo)
    async with running_relay(registry.url) as (relay, url):
        relay.answer(tag_request("PUT", image), Canned(503))
        proxy = await start_proxy(url, redis_url=redis_server.url)
        await attach(http, proxy, repo, artifact_manifest(image))
        for _ in range(200):
            async with http.get(f"{proxy}/readyz") as response:
                ready = (response.status, orjson.loads(await response.read()))
            if ready[1]["notes"]["tag_writes"] != "ok":
                break
            await asyncio.sleep(0.02)
        assert ready[0] == 200, "pulls and referrers still work: no reason to leave service"
        assert ready[1]["notes"] == {"tag_writes": "failing for 1 subjects, retrying"}
        assert value(await scrape(http, proxy), "tag_writes_failing") == 1


@pytest.mark.parametrize("redis", [True, False], ids=["written-behind", "written-through"])
async def test_a_long_list_is_capped_and_attaches_never_fail(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    redis: bool,
) -> None:
    """Was: an index near the registry's 4 MiB limit made every further attach answer 502.
    Scaled down: a 2 KiB cap, referrers of about 330 bytes each."""
    redis_url = redis_server.url if redis else None
    proxy = await start_proxy(registry.url, redis_url=redis_url, tag_index_max_bytes=2048)
    image = await push_subject_image(http, proxy, repo)
    before = await scrape(http, proxy)
    attached = [
        await attach(http, proxy, repo, artifact_manifest(image, annotations={"n": f"{n:0100d}"}))
        for n in range(12)
    ]
    assert await listed_referrers(http, proxy, repo, image) == attached
    for _ in range(500):
        status, listed, _ = await read_tag_index(http, registry.url, repo, image)
        left_out = Moved(before, await scrape(http, proxy))("tag_index_left_out_total")
        if len(listed) > 1 and left_out >= len(attached) - len(listed):
            break
        await asyncio.sleep(0.02)
    digests = [d["digest"] for d in listed]
    assert 1 < len(digests) < len(attached)
    assert digests == attached[: len(digests)], "the oldest keep their place"
    assert left_out >= len(attached) - len(digests)
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{legacy_tag(image)}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    ) as response:
        assert len(await response.read()) <= 2048

    wiped = aioredis.Redis.from_url(redis_server.url)
    await wiped.flushdb()
    await wiped.aclose()
    code, out, err = await run_reindex(
        "--upstream", registry.url, "--repository", repo, "--redis-url", redis_server.url
    )
    assert code == 0, err
    fresh = await start_proxy(registry.url, redis_url=redis_server.url)
    assert sorted(await listed_referrers(http, fresh, repo, image)) == sorted(attached), (
        "keep tags find what the tag-schema index had no room for"
    )


async def test_a_refresh_read_before_a_delete_brings_nothing_back(
    http: aiohttp.ClientSession, registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    """Two proxy processes sharing Redis: one revalidates the subject's tag (its answer arriving
    late, so stale), while the other deletes a listed referrer and rewrites the tag. The stale
    listing must not put the deleted referrer back, in the index or the registry's copy."""
    repo = f"t/stale-refresh-{tmp_path.name[-8:]}"
    shared = ("--redis-url", redis_server.url)
    with running_proxy(tmp_path / "writer", registry.url, *shared) as writing:
        writer = writing.url
        image = await push_subject_image(http, writer, repo)
        kept, deleted = (artifact_manifest(image, annotations={"n": str(n)}) for n in (1, 2))
        both = [await attach(http, writer, repo, m) for m in (kept, deleted)]
        assert (await settled_tag_index(http, registry.url, repo, image, both))[0] == 200
        # A legacy client appends to the tag: the replicas' last sync marker no longer matches
        # it, so the next revalidation reads the whole list.
        legacy = sha256(await legacy_attach(http, registry.url, repo, image, 3))
        now = [sha256(kept), legacy]
        async with running_relay(registry.url) as (relay, url):
            relay.hold(tag_request("GET", image), 1.5)
            # The relay serves on this event loop: start and stop the process off it.
            with ExitStack() as exits:
                reading = await asyncio.to_thread(
                    exits.enter_context,
                    running_proxy(tmp_path / "reader", url, *shared, "--fallback-refresh", "0.001"),
                )
                stale_read = asyncio.create_task(listed_referrers(http, reading.url, repo, image))
                for _ in range(500):
                    if any(legacy_tag(image) in seen for seen in relay.seen):
                        break
                    await asyncio.sleep(0.01)
                async with http.delete(f"{writer}/v2/{repo}/manifests/{sha256(deleted)}") as gone:
                    assert gone.status == 202
                assert not stale_read.done(), "the stale answer is still on its way"
                _, listed, _ = await settled_tag_index(http, registry.url, repo, image, now)
                assert [d["digest"] for d in listed] == now
                assert await stale_read == now
                relay.clear()
                assert await listed_referrers(http, reading.url, repo, image) == now
                await asyncio.to_thread(exits.close)
        assert await listed_referrers(http, writer, repo, image) == now
    _, listed, _ = await settled_tag_index(http, registry.url, repo, image, now)
    assert [d["digest"] for d in listed] == now


async def test_an_index_wiped_under_a_write_keeps_every_referrer_in_the_copy(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    """Was (CI, the 20,000-referrer test): Redis was wiped while a tag write was in flight, and
    that write's sync marker landed in the empty index after the wipe. The next write took the
    copy for one the index already held, rendered it from what the index held now and dropped
    the legacy referrers, which nothing else lists (no keep tag): the registry's GC takes them.
    Here the race's end state is set up directly: the index wiped, then the marker set."""
    image = await push_subject_image(http, registry.url, repo)
    subject = sha256(image)
    legacy = [sha256(await legacy_attach(http, registry.url, repo, image, n)) for n in range(3)]
    proxy = await start_proxy(registry.url, redis_url=redis_server.url, tag_write_delay=0.05)
    first = await attach(http, proxy, repo, artifact_manifest(image, annotations={"n": "1"}))
    _, _, written = await settled_tag_index(http, registry.url, repo, image, [*legacy, first])
    assert written is not None
    wiped = aioredis.Redis.from_url(redis_server.url)
    await wiped.flushdb()
    await wiped.aclose()
    store = open_index(Settings(upstream=URL(registry.url), redis_url=redis_server.url))
    await store.set_tag_sync(repo, subject, TagSync(written, time.time()))
    await store.close()
    second = await attach(http, proxy, repo, artifact_manifest(image, annotations={"n": "2"}))
    everything = [*legacy, first, second]
    _, listed, _ = await settled_tag_index(http, registry.url, repo, image, everything)
    assert [d["digest"] for d in listed] == everything
    assert sorted(await listed_referrers(http, proxy, repo, image)) == sorted(everything)


async def test_an_index_wiped_between_a_writes_reads_keeps_every_referrer_in_the_copy(
    http: aiohttp.ClientSession,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was (CI, the 20,000-referrer test, after the fix above): the wipe landed after a write
    read the index and before it recorded the referrer it carried; the write read the index
    again to render the copy, found only that referrer and dropped the 9,501 legacy ones.
    The wipe is landed here as the write's read of the index ends."""
    image = await push_subject_image(http, registry.url, repo)
    subject = sha256(image)
    legacy = [sha256(await legacy_attach(http, registry.url, repo, image, n)) for n in range(3)]
    manifests = [artifact_manifest(image, annotations={"n": str(n)}) for n in (1, 2)]
    first, second = (inspect_manifest(m, MANIFEST) for m in manifests)
    assert first is not None
    assert second is not None
    raw = aioredis.Redis.from_url(redis_server.url)
    async with in_process_writer(registry, redis_server) as made:
        store, writer = made.store, made.writer
        for manifest in manifests:
            assert (await push_manifest(http, registry.url, repo, manifest)).status == 201
        await store.add(repo, first)
        await writer.changed(repo, subject, None, first)
        _, listed, _ = await read_tag_index(http, registry.url, repo, image)
        assert [d["digest"] for d in listed] == [*legacy, first.digest]

        read = store.page

        async def wiped_once_read(*args: Any) -> Page:
            page = await read(*args)
            if page.next_after is None:
                monkeypatch.setattr(store, "page", read)
                await raw.flushdb()
            return page

        monkeypatch.setattr(store, "page", wiped_once_read)
        await store.add(repo, second)
        with pytest.raises(IndexUnavailable, match="unlock"):  # the wipe took the lock too
            await writer.changed(repo, subject, None, second)
    await raw.aclose()
    _, listed, _ = await read_tag_index(http, registry.url, repo, image)
    assert [d["digest"] for d in listed] == [*legacy, first.digest, second.digest]


async def test_a_copy_listing_another_subjects_referrer_drops_it_once(
    http: aiohttp.ClientSession, registry: Registry, redis_server: Redis, repo: str
) -> None:
    """Found by review of the fix above: a referrer a push recorded under subject A, also listed
    in B's copy, is refused by the index under B; the copy kept listing it (the proxy's answer
    for B does not) and was written again at every write."""
    a = await push_subject_image(http, registry.url, repo)
    b = await push_image(http, registry.url, repo, "v2", b"another layer")
    legacy = sha256(await legacy_attach(http, registry.url, repo, b, 0))
    body = artifact_manifest(a, annotations={"of": "a"})
    assert (await push_manifest(http, registry.url, repo, body)).status == 201
    of_a = inspect_manifest(body, MANIFEST)
    assert of_a is not None
    _, listed, _ = await read_tag_index(http, registry.url, repo, b)
    await put_copy(http, registry, repo, b, [*listed, orjson.loads(of_a.descriptor)])
    async with in_process_writer(registry, redis_server) as made:
        await made.store.add(repo, of_a)
        for _ in range(3):
            await made.writer.changed(repo, sha256(b), None)
    _, listed, _ = await read_tag_index(http, registry.url, repo, b)
    assert [d["digest"] for d in listed] == [legacy]
    assert made.puts == 1, "then unchanged"


async def test_a_copy_listing_a_referrer_twice_is_written_with_it_once(
    http: aiohttp.ClientSession, registry: Registry, redis_server: Redis, repo: str
) -> None:
    """Found by review: with the index holding the referrer, the rendering kept the copy's
    duplicate, came out equal to the copy and was not written."""
    image = await push_subject_image(http, registry.url, repo)
    legacy = sha256(await legacy_attach(http, registry.url, repo, image, 0))
    _, listed, _ = await read_tag_index(http, registry.url, repo, image)
    async with in_process_writer(registry, redis_server) as made:
        for _ in range(2):  # the index lacks it, then holds it
            await put_copy(http, registry, repo, image, [*listed, *listed])
            await made.writer.changed(repo, sha256(image), None)
            _, written, _ = await read_tag_index(http, registry.url, repo, image)
            assert [d["digest"] for d in written] == [legacy]


async def test_a_referrer_deleted_past_its_tombstone_is_not_taken_back_in(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    """Found by review of the test above's fix: a referrer deleted while its subject's tag write
    failed (the copy still lists it) and whose tombstone has expired (24 h) was taken back into
    the index by the next write, and listed again, since the copy came out unchanged and was not
    written. A copy that took anything in is written: the registry refuses the deleted child."""
    image = await push_subject_image(http, registry.url, repo)
    subject = sha256(image)
    proxy = await start_proxy(registry.url, redis_url=redis_server.url, tag_write_delay=0.05)
    deleted, kept = (artifact_manifest(image, annotations={"n": str(n)}) for n in (1, 2))
    both = [await attach(http, proxy, repo, m) for m in (deleted, kept)]
    _, listed, _ = await settled_tag_index(http, registry.url, repo, image, both)
    assert [d["digest"] for d in listed] == both
    async with http.delete(f"{registry.url}/v2/{repo}/manifests/{both[0]}") as gone:
        assert gone.status == 202
    store = open_index(Settings(upstream=URL(registry.url), redis_url=redis_server.url))
    await store.remove(repo, both[0])
    await store.close()
    raw = aioredis.Redis.from_url(redis_server.url)
    assert await raw.delete(keys.subject_tombstones(repo, subject)) == 1
    await raw.aclose()
    assert await listed_referrers(http, proxy, repo, image) == [both[1]]
    await attach(http, proxy, repo, kept)  # pushed again: a write that changes nothing else
    _, listed, _ = await settled_tag_index(http, registry.url, repo, image, [both[1]])
    assert [d["digest"] for d in listed] == [both[1]]
    assert await listed_referrers(http, proxy, repo, image) == [both[1]]


async def test_a_legacy_referrer_deleted_through_the_proxy_stays_gone_after_a_failed_write(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: the copy's entries were taken into the index before the write that
    would find them deleted; when that write failed once (503), its retry saw nothing to take
    in, found the copy unchanged and left the deleted referrer listed. Now a write that took
    anything in stays bound to write, retries included."""
    monkeypatch.setattr(tag_writer, "RETRY_SECONDS", (0.3,) * 4)
    image = await push_subject_image(http, registry.url, repo)
    legacy = sha256(await legacy_attach(http, registry.url, repo, image, 0))
    async with running_relay(registry.url) as (relay, url):
        proxy = await start_proxy(url, redis_url=redis_server.url, tag_write_delay=0.05)
        relay.answer(first(1, tag_request("PUT", image)), Canned(503))
        async with http.delete(f"{proxy}/v2/{repo}/manifests/{legacy}") as gone:
            assert gone.status == 202
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, [])
        assert listed == []
        assert await listed_referrers(http, proxy, repo, image) == []
