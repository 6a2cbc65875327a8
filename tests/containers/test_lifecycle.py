"""Stopping and killing the proxy's container: `docker stop` lets requests in flight finish,
and a SIGKILL then a restart loses no referrer that was acknowledged."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import aiohttp

from proxy.devstack.oci_client import (
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)
from tests.containers.conftest import Stack, answers, wait_for

GRACE = 10  # seconds: REFERRERS_PROXY_SHUTDOWN_GRACE, and what `docker stop` waits before SIGKILL


async def slowly(chunks: list[bytes], started: asyncio.Event) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        started.set()
        await asyncio.sleep(0.3)  # the client's pace, not a wait


async def test_docker_stop_drains_in_flight_requests_and_exits_zero(
    stack: Stack, registry: str, http: aiohttp.ClientSession
) -> None:
    proxy, url = stack.proxy(registry, shutdown_grace=str(GRACE))
    await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    chunks = [os.urandom(256 * 1024) for _ in range(10)]  # about 3 s on the wire
    blob = b"".join(chunks)
    async with http.post(f"{url}/v2/drain/app/blobs/uploads/") as started:
        assert started.status == 202
        location = started.headers["Location"]
    if location.startswith("/"):
        location = url + location
    separator = "&" if "?" in location else "?"

    started = asyncio.Event()

    async def upload() -> int:
        target = f"{location}{separator}digest={sha256(blob)}"
        async with http.put(target, data=slowly(chunks, started)) as response:
            return response.status

    in_flight = asyncio.create_task(upload())
    await started.wait()
    wrapped = proxy.get_wrapped_container()
    began = time.monotonic()
    await asyncio.to_thread(wrapped.stop, timeout=GRACE + 5)
    took = time.monotonic() - began
    assert await in_flight == 201, "the upload in flight at SIGTERM finished"
    wrapped.reload()
    assert wrapped.attrs["State"]["ExitCode"] == 0
    assert took < GRACE, f"stopped after {took:.1f} s"
    async with http.head(f"{registry}/v2/drain/app/blobs/{sha256(blob)}") as stored:
        assert stored.status == 200


async def test_kill_then_restart_loses_no_acknowledged_referrer(
    stack: Stack, registry: str, redis: str, http: aiohttp.ClientSession
) -> None:
    proxy, url = stack.proxy(registry, redis_url=redis)
    await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    image = await push_subject_image(http, url, "restart/app")
    acknowledged = []
    for n in range(3):
        referrer = artifact_manifest(image, annotations={"n": str(n)})
        assert (await push_manifest(http, url, "restart/app", referrer)).status == 201
        acknowledged.append(sha256(referrer))
    wrapped = proxy.get_wrapped_container()
    wrapped.kill()
    wrapped.reload()
    assert wrapped.attrs["State"]["ExitCode"] == 137
    wrapped.start()
    await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    listed = await listed_referrers(http, url, "restart/app", image)
    assert sorted(listed) == sorted(acknowledged)
