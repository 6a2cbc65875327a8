"""Bodies stream: the proxy's peak memory stays flat while 256 MiB go up and come back down."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.harness.processes import Registry, running_proxy

BLOB = 256 * 1024 * 1024
CHUNK = 1024 * 1024
ALLOWED_GROWTH = 64 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def chunks() -> tuple[AsyncIterator[bytes], hashlib._Hash]:
    """256 MiB produced on the fly, never held whole, hashed as they go."""
    digest = hashlib.sha256()
    base = bytes(range(256)) * (CHUNK // 256)

    async def produce() -> AsyncIterator[bytes]:
        for n in range(BLOB // CHUNK):
            chunk = n.to_bytes(8, "big") + base[8:]
            digest.update(chunk)
            yield chunk

    return produce(), digest


async def test_256_mib_up_and_down_without_growing_the_proxy(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    with running_proxy(tmp_path, registry.url) as proxy:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.get(f"{proxy.url}/v2/") as warm:
                assert warm.status == 200
            baseline = peak_rss(proxy.process.pid)
            async with http.post(f"{proxy.url}/v2/{repo}/blobs/uploads/") as started:
                location = started.headers["Location"]
            body, digest = chunks()
            async with http.patch(
                location, data=body, headers={"Content-Type": "application/octet-stream"}
            ) as patched:
                assert patched.status == 202, await patched.text()
                location = patched.headers["Location"]
            blob_digest = "sha256:" + digest.hexdigest()
            async with http.put(location, params={"digest": blob_digest}) as done:
                assert done.status == 201, await done.text()
            after_upload = peak_rss(proxy.process.pid)
            pulled = hashlib.sha256()
            async with http.get(f"{proxy.url}/v2/{repo}/blobs/{blob_digest}") as download:
                assert download.headers["Content-Length"] == str(BLOB)
                async for chunk in download.content.iter_chunked(CHUNK):
                    pulled.update(chunk)
            after_download = peak_rss(proxy.process.pid)
    assert "sha256:" + pulled.hexdigest() == blob_digest
    assert after_upload - baseline < ALLOWED_GROWTH, (baseline, after_upload)
    assert after_download - baseline < ALLOWED_GROWTH, (baseline, after_download)
