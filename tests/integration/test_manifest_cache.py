"""The manifest cache against the real registry (and real Redis): a relay between proxy and
registry records what reaches the registry, and makes the answers only load or an outage give."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from yarl import URL

from proxy.config import ManifestCacheMode
from proxy.devstack.oci_client import (
    EMPTY_JSON,
    INDEX,
    MANIFEST,
    artifact_manifest,
    basic_auth,
    push_blob,
    push_image,
    push_manifest,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, free_port
from proxy.index.keys import MANIFEST_CACHE_PREFIX as REDIS_PREFIX
from proxy.oci.cache_rules import MAX_ENTRY_BYTES
from proxy.services.manifest_cache import RedisEntries, make_entry
from tests.conftest import AUTH_PASSWORD, AUTH_USER, StartProxy
from tests.harness.fault_relay import Canned, FaultRelay, running_relay

OCI_ACCEPT = {"Accept": f"{MANIFEST}, {INDEX}"}
SAME = ("Content-Type", "Docker-Content-Digest", "Content-Length", "Etag")


@pytest.fixture
async def relay(registry: Registry) -> AsyncIterator[tuple[FaultRelay, str]]:
    async with running_relay(registry.url) as started:
        yield started


async def get(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, headers=headers or OCI_ACCEPT) as response:
        return response.status, dict(response.headers), await response.read()


def reached(relay: FaultRelay, path: str) -> int:
    return sum(1 for seen in relay.seen if seen.endswith(path))


async def image(http: aiohttp.ClientSession, base: str, repo: str) -> tuple[bytes, str]:
    manifest = await push_image(http, base, repo, "v1")
    return manifest, f"/v2/{repo}/manifests/{sha256(manifest)}"


async def test_a_repeated_pull_by_digest_is_answered_byte_identical_from_the_cache(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    proxy = await start_proxy(relayed)
    manifest, path = await image(http, registry.url, repo)
    direct = await get(http, registry.url + path)
    first = await get(http, proxy + path)
    second = await get(http, proxy + path)
    head = await get(http, proxy + path, "HEAD", **OCI_ACCEPT)
    assert reached(watcher, path) == 1
    for status, headers, body in (first, second):
        assert (status, body) == (200, manifest)
        assert {h: headers[h] for h in SAME} == {h: direct[1][h] for h in SAME}
    assert head[0] == 200
    assert head[2] == b""
    assert {h: head[1][h] for h in SAME} == {h: direct[1][h] for h in SAME}
    async with http.get(proxy + "/metrics") as page:
        text = await page.text()
    assert 'referrers_proxy_cache_lookups_total{cache="manifest",result="hit"} 2.0' in text


async def test_what_the_cache_never_answers(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    proxy = await start_proxy(relayed)
    manifest, path = await image(http, registry.url, repo)
    assert (await get(http, proxy + path))[0] == 200
    # An Accept without the manifest's type: Distribution's 404, as direct.
    docker_only = "application/vnd.docker.distribution.manifest.v2+json"
    assert (await get(http, proxy + path, Accept=docker_only))[0] == 404
    assert (await get(http, proxy + path, Accept="*/*"))[0] == 404
    # Conditional and queried requests: the registry's own answer.
    etag = f'"{sha256(manifest)}"'
    assert (await get(http, proxy + path, **OCI_ACCEPT, **{"If-None-Match": etag}))[0] == 304
    assert (await get(http, proxy + path + "?x=1"))[0] == 200
    assert reached(watcher, path) == 4  # the fill, the two Accepts, the conditional
    # By tag: never from the cache.
    tag_path = f"/v2/{repo}/manifests/v1"
    for _ in range(2):
        assert (await get(http, proxy + tag_path))[2] == manifest
    assert reached(watcher, tag_path) == 2
    # Non-200s are never kept.
    missing = f"/v2/{repo}/manifests/sha256:{'0' * 64}"
    for _ in range(2):
        assert (await get(http, proxy + missing))[0] == 404
    assert reached(watcher, missing) == 2


async def test_a_head_or_a_large_manifest_fills_nothing(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    proxy = await start_proxy(relayed)
    _, path = await image(http, registry.url, repo)
    for _ in range(2):
        assert (await get(http, proxy + path, "HEAD", **OCI_ACCEPT))[0] == 200
    assert reached(watcher, path) == 2
    await push_blob(http, registry.url, repo, EMPTY_JSON)
    subject = await push_image(http, registry.url, repo, "big")
    big = artifact_manifest(subject, annotations={"pad": "x" * MAX_ENTRY_BYTES})
    assert (await push_manifest(http, registry.url, repo, big)).status == 201
    big_path = f"/v2/{repo}/manifests/{sha256(big)}"
    for _ in range(2):
        assert (await get(http, proxy + big_path))[2] == big
    assert reached(watcher, big_path) == 2


async def test_a_delete_through_the_proxy_invalidates_and_one_that_bypasses_it_lasts_the_ttl(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    _, relayed = relay
    proxy = await start_proxy(relayed, manifest_cache_seconds=0.5)
    _, path = await image(http, registry.url, repo)
    assert (await get(http, proxy + path))[0] == 200
    async with http.delete(proxy + path) as deleted:
        assert deleted.status == 202
    assert (await get(http, proxy + path))[0] == 404
    # A delete straight at the registry: the cached copy is served until the TTL ends.
    manifest, path = await image(http, registry.url, repo + "-b")
    assert (await get(http, proxy + path))[0] == 200
    async with http.delete(registry.url + path) as deleted:
        assert deleted.status == 202
    assert (await get(http, proxy + path))[2] == manifest
    await _until_gone(http, proxy + path)


async def _until_gone(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(40):
        if (await get(http, url))[0] == 404:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} still served after its TTL")


@pytest.mark.parametrize(
    "caller",
    [{}, basic_auth(AUTH_USER, "wrong"), {"Authorization": "Bearer forged"}],
    ids=["anonymous", "wrong-password", "forged-token"],
)
async def test_a_caller_without_pull_permission_never_gets_a_cached_manifest(
    http: aiohttp.ClientSession,
    auth_registry: Registry,
    start_proxy: StartProxy,
    repo: str,
    caller: dict[str, str],
) -> None:
    alice = basic_auth(AUTH_USER, AUTH_PASSWORD)
    async with running_relay(auth_registry.url) as (watcher, relayed):
        proxy = await start_proxy(relayed)
        async with aiohttp.ClientSession(headers=alice) as as_alice:
            _, path = await image(as_alice, auth_registry.url, repo)
            for _ in range(2):
                assert (await get(as_alice, proxy + path))[0] == 200
        assert reached(watcher, path) == 1  # alice's second pull came from the cache
        for _ in range(2):
            status, headers, body = await get(http, proxy + path, **OCI_ACCEPT, **caller)
            assert status == 401
            assert "WWW-Authenticate" in headers
            assert b"schemaVersion" not in body
        assert reached(watcher, path) == 3


@pytest.mark.parametrize(
    "refusal",
    [
        Canned(503, b"", {"Retry-After": "1"}),
        Canned(500, b'{"errors":[{"code":"UNKNOWN"}]}'),
        Canned(429, b"", {"Retry-After": "2"}),
        Canned(403, b'{"errors":[{"code":"DENIED"}]}'),
        Canned(401, b"", {"WWW-Authenticate": 'Basic realm="r"'}),
    ],
    ids=lambda canned: str(canned.status),
)
async def test_an_upstream_refusal_or_fault_never_opens_the_cache(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
    refusal: Canned,
) -> None:
    """Another credential's fill is in the cache; this caller's own requests get the upstream's
    refusal, and only its own 200 lets the cache answer it."""
    watcher, relayed = relay
    proxy = await start_proxy(relayed)
    manifest, path = await image(http, registry.url, repo)
    assert (await get(http, proxy + path))[0] == 200  # anonymous: filled and granted
    other = {"Authorization": "Bearer other-caller"}
    watcher.answer(lambda r: r.headers.get("Authorization") == other["Authorization"], refusal)
    for _ in range(2):
        assert (await get(http, proxy + path, **OCI_ACCEPT, **other))[0] == refusal.status
    assert reached(watcher, path) == 3
    watcher.clear()
    assert (await get(http, proxy + path, **OCI_ACCEPT, **other))[2] == manifest
    assert (await get(http, proxy + path, **OCI_ACCEPT, **other))[2] == manifest
    assert reached(watcher, path) == 4


async def test_a_timeout_never_opens_the_cache(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    proxy = await start_proxy(relayed, read_timeout=0.3)
    _, path = await image(http, registry.url, repo)
    assert (await get(http, proxy + path))[0] == 200
    other = {"Authorization": "Bearer slow-caller"}
    watcher.delay(lambda r: r.headers.get("Authorization") == other["Authorization"], 1.0)
    for _ in range(2):
        assert (await get(http, proxy + path, **OCI_ACCEPT, **other))[0] == 504
    assert reached(watcher, path) == 3


async def test_no_grant_memory_means_no_cache(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    """With --auth-cache-seconds 0 no permission is remembered, so the cache never answers."""
    watcher, relayed = relay
    proxy = await start_proxy(relayed, auth_cache_seconds=0)
    _, path = await image(http, registry.url, repo)
    for _ in range(3):
        assert (await get(http, proxy + path))[0] == 200
    assert reached(watcher, path) == 3


async def test_off_leaves_every_pull_to_the_registry(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    proxy = await start_proxy(relayed, manifest_cache=ManifestCacheMode.OFF)
    _, path = await image(http, registry.url, repo)
    for _ in range(2):
        assert (await get(http, proxy + path))[0] == 200
    assert reached(watcher, path) == 2


async def test_redis_is_shared_by_replicas_and_a_delete_through_either_reaches_both(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    start_proxy: StartProxy,
    repo: str,
) -> None:
    watcher, relayed = relay
    shared = {"redis_url": redis_server.url, "manifest_cache": ManifestCacheMode.REDIS}
    one, two = await start_proxy(relayed, **shared), await start_proxy(relayed, **shared)
    manifest, path = await image(http, registry.url, repo)
    assert (await get(http, one + path))[2] == manifest
    # The second replica proves this caller's permission by a pull check of its own...
    async with http.get(f"{two}/v2/{repo}/referrers/{sha256(manifest)}") as listed:
        assert listed.status == 200
    # ...and then answers from what the first one kept.
    assert (await get(http, two + path))[2] == manifest
    assert watcher.seen.count(f"GET {path}") == 1
    async with http.delete(two + path) as deleted:
        assert deleted.status == 202
    assert (await get(http, one + path))[0] == 404


async def test_redis_down_means_the_registry_answers(
    http: aiohttp.ClientSession,
    registry: Registry,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    start_proxy: StartProxy,
    repo: str,
) -> None:
    _, relayed = relay
    proxy = await start_proxy(
        relayed,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        manifest_cache=ManifestCacheMode.REDIS,
    )
    manifest, path = await image(http, registry.url, repo)
    for _ in range(2):
        assert (await get(http, proxy + path))[2] == manifest
    async with http.get(proxy + "/metrics") as page:
        text = await page.text()
    assert 'cache_lookups_total{cache="manifest",result="unavailable"} 1.0' in text


async def test_redis_entries_expire_and_stay_under_their_byte_bound(redis_server: Redis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete(*[f"{REDIS_PREFIX}:{k}" for k in ("order", "sizes", "bytes")])
    body = b"x" * 10_000
    one = len(orjson.dumps({})) + 10_000  # at least this much per entry
    storage = RedisEntries(client, 3 * one + 2000, seconds=0.3)
    url = URL("http://r/v2/a/manifests/x")
    try:
        for key in ("a", "b", "c", "d"):
            await storage.write(key, make_entry(url, [("Content-Type", MANIFEST)], body, 60))
        assert await storage.size() <= 3
        assert int(await client.get(f"{REDIS_PREFIX}:bytes")) <= 3 * one + 2000
        assert not await storage.contains("a")  # the oldest went first
        assert (await storage.read("d"))._body == body  # type: ignore[union-attr]
        await storage.delete("d")
        await storage.write("d", make_entry(url, [("Content-Type", MANIFEST)], body, 60))
        assert await storage.read("d") is None  # the tombstone refused the late fill
        assert await client.pttl(f"{REDIS_PREFIX}:entry:c") <= 300
        await storage.clear()
        assert await storage.size() == 0
        assert int(await client.get(f"{REDIS_PREFIX}:bytes")) == 0
    finally:
        await storage.close()
