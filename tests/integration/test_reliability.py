"""Faults of the real parts: Redis killed and restarted, the proxy stopped mid-flight."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    read_tag_index,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Registry, free_port, running_proxy, running_redis
from tests.conftest import StartProxy

SBOM, SIG = "application/spdx+json", "application/vnd.example.sig"


async def test_redis_killed_reads_go_on_and_the_index_catches_up(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    with running_redis(tmp_path / "redis-1", port=port) as redis:
        proxy = await start_proxy(registry.url, redis_url=redis.url)
        image = await push_subject_image(http, proxy, repo)
        sbom = artifact_manifest(image, artifact_type=SBOM)
        sig = artifact_manifest(image, artifact_type=SIG)
        for manifest in (sbom, sig):
            assert (await push_manifest(http, proxy, repo, manifest)).status == 201
        expected = [sha256(sbom), sha256(sig)]
        await settled_tag_index(http, registry.url, repo, image, expected)
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

    with running_redis(tmp_path / "redis-2", port=port):
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
            await asyncio.sleep(0.2)
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{proxy.url}/v2/", headers={"Connection": "close"})
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
    with running_redis(tmp_path / "redis") as redis:
        with running_proxy(tmp_path / "a", registry.url, "--redis-url", redis.url) as first:
            image = await push_subject_image(http, first.url, repo)
            manifests = [artifact_manifest(image, annotations={"n": str(n)}) for n in range(40)]

            async def attach(base: str, manifest: bytes) -> int:
                try:
                    return (await push_manifest(http, base, repo, manifest)).status
                except aiohttp.ClientError:
                    return 0

            attaches = [asyncio.ensure_future(attach(first.url, m)) for m in manifests]
            await asyncio.sleep(0.05)
            first.process.kill()
            statuses = await asyncio.gather(*attaches)
        assert 0 in statuses or 201 in statuses
        with running_proxy(tmp_path / "b", registry.url, "--redis-url", redis.url) as second:
            for manifest, status in zip(manifests, statuses, strict=True):
                if status != 201:
                    assert await attach(second.url, manifest) == 201, "the client's retry"
            listed = await listed_referrers(http, second.url, repo, image)
    assert sorted(listed) == sorted(sha256(m) for m in manifests)
    status, in_tag, _ = await read_tag_index(http, registry.url, repo, image)
    assert status == 200, "no half-written tag index"
    assert sorted(d["digest"] for d in in_tag) == sorted(sha256(m) for m in manifests)
