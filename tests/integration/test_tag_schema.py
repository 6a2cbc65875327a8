"""The referrers tag schema, against the real registry: read, write-through, GC safety, tags."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    INDEX,
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
from proxy.devstack.processes import REGISTRY_BIN, Redis, Registry, running_proxy, running_registry
from tests.conftest import StartProxy

SBOM = "application/vnd.example.sbom.v1"


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        body = await response.read()
        return response.status, orjson.loads(body) if response.status == 200 else body


async def tag_index(
    http: aiohttp.ClientSession, registry: Registry, repo: str, subject: bytes
) -> tuple[int, list[str], str | None]:
    status, manifests, digest = await read_tag_index(http, registry.url, repo, subject)
    return status, [d["digest"] for d in manifests], digest


async def settled(
    http: aiohttp.ClientSession, registry: Registry, repo: str, subject: bytes, digests: list[str]
) -> tuple[int, list[str], str | None]:
    """The tag index once the write behind an attach lists `digests` (or a timeout)."""
    status, manifests, digest = await settled_tag_index(http, registry.url, repo, subject, digests)
    return status, [d["digest"] for d in manifests], digest


async def test_referrers_written_by_legacy_clients_are_listed(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    image = await push_subject_image(http, registry.url, repo)
    first = await legacy_attach(http, registry.url, repo, image, 1)
    second = await legacy_attach(http, registry.url, repo, image, 2)
    status, index = await get_json(http, f"{proxy}/v2/{repo}/referrers/{sha256(image)}")
    assert status == 200
    assert index["manifests"] == [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest),
            "size": len(manifest),
            "artifactType": SBOM,
            "annotations": {"legacy": str(n)},
        }
        for n, manifest in ((1, first), (2, second))
    ]
    third = artifact_manifest(image, artifact_type="application/vnd.example.sig")
    assert (await push_manifest(http, proxy, repo, third)).status == 201
    expected = [sha256(first), sha256(second), sha256(third)]
    assert await listed_referrers(http, proxy, repo, image) == expected
    assert (await settled(http, registry, repo, image, expected))[1] == expected


@pytest.mark.parametrize("keep_tags", [True, False], ids=["written-behind", "written-through"])
async def test_the_registry_index_follows_and_superseded_ones_are_deleted(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    keep_tags: bool,
) -> None:
    """With keep tags off the tag-schema index is the durable record: an attach or delete is
    answered once it is written. With keep tags on it follows behind."""
    proxy = await start_proxy(registry.url, keep_tags=keep_tags)

    async def tag_lists(digests: list[str]) -> tuple[int, list[str], str | None]:
        if keep_tags:
            return await settled(http, registry, repo, image, digests)
        return await tag_index(http, registry, repo, image)

    image = await push_subject_image(http, proxy, repo)
    first = artifact_manifest(image, annotations={"n": "1"})
    assert (await push_manifest(http, proxy, repo, first)).status == 201
    _, digests, old_index = await tag_lists([sha256(first)])
    assert digests == [sha256(first)]
    second = artifact_manifest(image, annotations={"n": "2"})
    assert (await push_manifest(http, proxy, repo, second)).status == 201
    _, digests, new_index = await tag_lists([sha256(first), sha256(second)])
    assert digests == [sha256(first), sha256(second)]
    assert new_index != old_index
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{old_index}", headers={"Accept": INDEX}
    ) as gone:
        assert gone.status == 404, "the superseded index must not pile up"

    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(first)}") as deleted:
        assert deleted.status == 202
    assert (await tag_lists([sha256(second)]))[1] == [sha256(second)]
    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(second)}") as deleted:
        assert deleted.status == 202
    assert (await tag_lists([]))[0] == 404, "no empty index left behind"
    assert await listed_referrers(http, proxy, repo, image) == []


@pytest.mark.parametrize("mode", [FallbackMode.READ, FallbackMode.OFF])
async def test_read_and_off_modes_never_write_tags(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    mode: FallbackMode,
) -> None:
    proxy = await start_proxy(registry.url, fallback_tags=mode)
    image = await push_subject_image(http, proxy, repo)
    legacy = await legacy_attach(http, registry.url, repo, image, 1)
    _, _, before = await tag_index(http, registry, repo, image)
    ours = artifact_manifest(image, annotations={"via": "proxy"})
    assert (await push_manifest(http, proxy, repo, ours)).status == 201
    assert (await tag_index(http, registry, repo, image))[2] == before
    expected = {sha256(legacy), sha256(ours)} if mode is FallbackMode.READ else {sha256(ours)}
    assert set(await listed_referrers(http, proxy, repo, image)) == expected


async def test_what_the_tag_holds_is_checked_before_it_is_served(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    """Some registries resolve `sha256-<hex>` to the subject itself (oras-go#1396); and a tag
    may hold anything. Neither is served, nor overwritten."""
    image = await push_subject_image(http, registry.url, repo)
    tagged_subject = await push_manifest(http, registry.url, repo, image, legacy_tag(image))
    assert tagged_subject.status == 201
    assert await listed_referrers(http, proxy, repo, image) == []
    other = await push_image(http, registry.url, repo, "other", layer=b"other")
    await push_manifest(http, registry.url, repo, other, legacy_tag(other))
    assert await listed_referrers(http, proxy, repo, other) == []
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    assert await listed_referrers(http, proxy, repo, image) == [sha256(referrer)]
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{legacy_tag(image)}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ) as still:
        assert await still.read() == image, "a tag that is not a referrers index is left alone"


async def test_refresh_window_and_immediate_own_changes(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    slow = await start_proxy(registry.url, fallback_refresh=3600.0)
    eager = await start_proxy(registry.url, fallback_refresh=0.0)
    image = await push_subject_image(http, slow, repo)
    first = await legacy_attach(http, registry.url, repo, image, 1)
    assert await listed_referrers(http, slow, repo, image) == [sha256(first)]
    second = await legacy_attach(http, registry.url, repo, image, 2)
    assert await listed_referrers(http, slow, repo, image) == [sha256(first)], (
        "cached for the window"
    )
    assert await listed_referrers(http, eager, repo, image) == [sha256(first), sha256(second)]
    own = artifact_manifest(image, annotations={"via": "slow"})
    assert (await push_manifest(http, slow, repo, own)).status == 201
    everything = [sha256(first), sha256(second), sha256(own)]
    assert (await settled(http, registry, repo, image, everything))[1] == everything
    assert set(await listed_referrers(http, slow, repo, image)) == set(everything), (
        "the tag's write behind an attach re-reads it, so the index is current"
    )


async def test_50_concurrent_attaches_across_two_processes_sharing_redis(
    http: aiohttp.ClientSession, registry: Registry, redis_server: Redis, repo: str, tmp_path: Path
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    shared = ("--redis-url", redis_server.url)
    with (
        running_proxy(tmp_path, registry.url, *shared) as one,
        running_proxy(tmp_path, registry.url, *shared) as two,
    ):
        image = await push_subject_image(http, one.url, repo)

        async def attach(n: int) -> str:
            manifest = artifact_manifest(image, annotations={"n": str(n)})
            response = await push_manifest(http, (one, two)[n % 2].url, repo, manifest)
            assert response.status == 201, response.status
            return sha256(manifest)

        pushed = set(await asyncio.gather(*(attach(n) for n in range(50))))
        for proxy in (one, two):
            assert set(await listed_referrers(http, proxy.url, repo, image)) == pushed
    status, in_registry, _ = await tag_index(http, registry, repo, image)
    assert status == 200
    assert sorted(in_registry) == sorted(pushed), "the registry itself holds every referrer"
    with running_proxy(tmp_path, registry.url) as fresh:
        assert set(await listed_referrers(http, fresh.url, repo, image)) == pushed


@pytest.fixture(scope="module")
def gc_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("gc-registry")) as started:
        yield started


async def test_distribution_2_8_gc_deletes_listed_referrers_all_the_same(
    http: aiohttp.ClientSession, start_proxy: StartProxy, gc_registry: Registry, repo: str
) -> None:
    """Measured on Debian's 2.8.2, against FIELD-NOTES: `garbage-collect --delete-untagged`
    deletes an untagged referrer even while a tagged tag-schema index lists it (2.8 marks the
    index's children as blobs only; v3 added unmarkReferencedManifest). The README warns
    operators; if this starts failing, the upstream changed and the README must too. Hence the
    keep tags (test_keep_tags.py); here they are off, to pin what they guard against."""
    proxy = await start_proxy(gc_registry.url, keep_tags=False)
    image = await push_subject_image(http, gc_registry.url, repo)
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    assert (await tag_index(http, gc_registry, repo, image))[1] == [sha256(referrer)]
    config = gc_registry.data_dir.parent / "config.yml"
    done = await asyncio.to_thread(
        subprocess.run,
        [REGISTRY_BIN, "garbage-collect", "--delete-untagged", str(config)],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    url = f"{gc_registry.url}/v2/{repo}/manifests/{sha256(referrer)}"
    async with http.get(url, headers=accept) as response:
        assert response.status == 404
    assert (await tag_index(http, gc_registry, repo, image))[1] == [sha256(referrer)]


async def test_tags_list_hides_tag_schema_tags_and_paginates(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url)
    image = await push_subject_image(http, proxy, repo)
    for tag in ("b", "a", "C", "c-1", "v2.0"):
        assert (await push_manifest(http, registry.url, repo, image, tag)).status == 201
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    assert (await settled(http, registry, repo, image, [sha256(referrer)]))[0] == 200
    status, direct = await get_json(http, f"{registry.url}/v2/{repo}/tags/list")
    assert legacy_tag(image) in direct["tags"]
    status, everything = await get_json(http, f"{proxy}/v2/{repo}/tags/list")
    assert everything == {"name": repo, "tags": ["C", "a", "b", "c-1", "v1", "v2.0"]}
    pages, url = [], f"{proxy}/v2/{repo}/tags/list?n=2"
    for _ in range(10):
        async with http.get(url) as response:
            pages.append(orjson.loads(await response.read())["tags"])
            link = response.headers.get("Link")
        if link is None:
            break
        assert link.endswith('>; rel="next"')
        url = proxy + link[1 : link.index(">")]
    assert pages == [["C", "a"], ["b", "c-1"], ["v1", "v2.0"]]
    status, after = await get_json(http, f"{proxy}/v2/{repo}/tags/list?last=b")
    assert after["tags"] == ["c-1", "v1", "v2.0"]
    async with http.get(f"{proxy}/v2/{repo}/tags/list?n=0") as response:
        assert orjson.loads(await response.read())["tags"] == []
        assert "Link" not in response.headers
    status, body = await get_json(http, f"{proxy}/v2/{repo}/tags/list?n=-1")
    assert status == 400
    assert b"PAGINATION_NUMBER_INVALID" in body
    shown = await start_proxy(registry.url, show_fallback_tags=True)
    assert legacy_tag(image) in (await get_json(http, f"{shown}/v2/{repo}/tags/list"))[1]["tags"]
    status, body = await get_json(http, f"{proxy}/v2/never/pushed/tags/list")
    assert status == 404
    assert b"NAME_UNKNOWN" in body


async def test_a_listed_referrer_deleted_behind_the_proxys_back_does_not_block_the_tag(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    """Found by the soak with detaches: Distribution refuses (400 MANIFEST_BLOB_UNKNOWN) any index
    that lists a deleted manifest, so one stale entry, left by a concurrent detach or a client
    deleting at the registry directly, failed every later attach to that subject."""
    image = await push_subject_image(http, proxy, repo)
    kept, removed = (artifact_manifest(image, annotations={"n": str(n)}) for n in (1, 2))
    for manifest in (kept, removed):
        assert (await push_manifest(http, proxy, repo, manifest)).status == 201
    both = [sha256(kept), sha256(removed)]
    assert (await settled(http, registry, repo, image, both))[1] == both
    async with http.delete(f"{registry.url}/v2/{repo}/manifests/{sha256(removed)}") as deleted:
        assert deleted.status == 202

    late = artifact_manifest(image, annotations={"n": "3"})
    assert (await push_manifest(http, proxy, repo, late)).status == 201
    now = [sha256(kept), sha256(late)]
    assert (await settled(http, registry, repo, image, now))[1] == now
    assert await listed_referrers(http, proxy, repo, image) == [sha256(kept), sha256(late)]
