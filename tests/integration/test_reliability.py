"""Faults of the real parts: Redis killed and restarted, the proxy stopped mid-flight."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    MANIFEST,
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Registry, free_port, running_proxy, running_redis
from tests.conftest import RestartableRedis, StartProxy
from tests.harness.fault_relay import running_relay

SBOM, SIG = "application/spdx+json", "application/vnd.example.sig"


async def refused_soon(http: aiohttp.ClientSession, url: str) -> None:
    """Asks until a new connection is refused (the listener closed), for at most 2 s."""
    for _ in range(100):
        async with http.get(url, headers={"Connection": "close"}):
            await asyncio.sleep(0.02)


async def test_redis_killed_reads_go_on_and_the_index_catches_up(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    restartable_redis: RestartableRedis,
) -> None:
    with restartable_redis("redis-1") as redis:
        proxy = await start_proxy(registry.url, redis_url=redis.url)
        image = await push_subject_image(http, proxy, repo)
        sbom = artifact_manifest(image, artifact_type=SBOM)
        sig = artifact_manifest(image, artifact_type=SIG)
        for manifest in (sbom, sig):
            assert (await push_manifest(http, proxy, repo, manifest)).status == 201
        expected = [sha256(sbom), sha256(sig)]
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, expected)
        assert [d["digest"] for d in listed] == expected
        redis.process.kill()
        redis.process.wait()
    assert await listed_referrers(http, proxy, repo, image) == expected, "served from the tag"
    async with http.get(
        f"{proxy}/v2/{repo}/referrers/{sha256(image)}", params={"artifactType": SIG}
    ) as filtered:
        assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
        assert sha256(sbom).encode() not in await filtered.read()
    late = artifact_manifest(image, annotations={"late": "yes"})
    assert (await push_manifest(http, proxy, repo, late)).status == 503, "fails retryably"

    with restartable_redis("redis-2"):
        assert await listed_referrers(http, proxy, repo, image) == expected, "caught up, empty"
        assert (await push_manifest(http, proxy, repo, late)).status == 201, "the retry"
        assert await listed_referrers(http, proxy, repo, image) == [*expected, sha256(late)]
        everything = [*expected, sha256(late)]
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, everything)
    assert [d["digest"] for d in listed] == everything


async def test_redis_down_in_off_mode_is_503(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """With no tag-schema indexes to fall back on, the honest answer is retry-later."""
    proxy = await start_proxy(
        registry.url, redis_url=f"redis://127.0.0.1:{free_port()}/0", fallback_tags=FallbackMode.OFF
    )
    async with http.get(f"{proxy}/v2/{repo}/referrers/sha256:{'0' * 64}") as response:
        assert (response.status, response.headers["Retry-After"]) == (503, "1")


async def test_sigterm_lets_an_upload_in_flight_finish(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    with running_proxy(tmp_path, registry.url) as proxy:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{proxy.url}/v2/{repo}/blobs/uploads/") as started:
                location = started.headers["Location"]
            sent = asyncio.Event()
            data = os.urandom(4 * 1024 * 1024)

            async def body() -> object:
                yield data[: 1024 * 1024]
                sent.set()
                await asyncio.sleep(1.0)
                yield data[1024 * 1024 :]

            patch = asyncio.ensure_future(
                http.patch(
                    location, data=body(), headers={"Content-Type": "application/octet-stream"}
                )
            )
            await sent.wait()
            os.kill(proxy.process.pid, signal.SIGTERM)
            with pytest.raises(aiohttp.ClientConnectionError):
                await refused_soon(http, f"{proxy.url}/v2/")
            async with await patch as patched:
                assert patched.status == 202
                location = patched.headers["Location"]
            proxy.process.wait(timeout=30)
            assert proxy.process.returncode == 0
        async with aiohttp.ClientSession() as direct:
            finish = location.replace(proxy.url, registry.url)
            async with direct.put(finish, params={"digest": sha256(data)}) as done:
                assert done.status == 201, "every byte sent before SIGTERM arrived"


async def test_sigkill_mid_attach_then_retry_loses_nothing(
    http: aiohttp.ClientSession, registry: Registry, repo: str, tmp_path: Path
) -> None:
    """The proxy is killed while attaches are provably in flight: the registry already took
    their manifests (a relay holds its answers), the index has not recorded them yet."""
    async with running_relay(registry.url) as (relay, relayed):
        with running_redis(tmp_path / "redis") as redis:
            with ExitStack() as stack:
                # Started from a thread: the relay answers the proxy's start-up checks meanwhile.
                first = await asyncio.to_thread(
                    stack.enter_context,
                    running_proxy(tmp_path / "a", relayed, "--redis-url", redis.url),
                )
                image = await push_subject_image(http, first.url, repo)
                manifests = [artifact_manifest(image, annotations={"n": str(n)}) for n in range(40)]

                async def attach(base: str, manifest: bytes) -> int:
                    try:
                        return (await push_manifest(http, base, repo, manifest)).status
                    except aiohttp.ClientError:
                        return 0

                def referrer_put(request: web.Request) -> bool:
                    return request.method == "PUT" and "/manifests/" in request.path

                relay.hold(referrer_put, 30)
                before = len(relay.seen)
                attaches = [asyncio.ensure_future(attach(first.url, m)) for m in manifests]
                deadline = asyncio.get_running_loop().time() + 20
                while not any(s.startswith("PUT ") for s in relay.seen[before:]):
                    assert asyncio.get_running_loop().time() < deadline, "no attach got upstream"
                    await asyncio.sleep(0.01)
                first.process.kill()
                statuses = await asyncio.gather(*attaches)
            relay.clear()
            cut = [m for m, status in zip(manifests, statuses, strict=True) if status != 201]
            assert cut, "the kill cut at least one attach"
            stored = []
            for manifest in cut:
                async with http.head(
                    f"{registry.url}/v2/{repo}/manifests/{sha256(manifest)}",
                    headers={"Accept": MANIFEST},
                ) as response:
                    if response.status == 200:
                        stored.append(manifest)
            assert stored, "one was cut after the registry took it, before the index did"
            with running_proxy(tmp_path / "b", registry.url, "--redis-url", redis.url) as second:
                for manifest in cut:
                    assert await attach(second.url, manifest) == 201, "the client's retry"
                listed = await listed_referrers(http, second.url, repo, image)
    assert sorted(listed) == sorted(sha256(m) for m in manifests)
    status, in_tag, _ = await settled_tag_index(
        http, registry.url, repo, image, [sha256(m) for m in manifests], any_order=True
    )
    assert status == 200, "no half-written tag index"
    assert sorted(d["digest"] for d in in_tag) == sorted(sha256(m) for m in manifests)
