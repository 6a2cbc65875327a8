"""Bodies stream: the proxy's peak memory stays flat while 256 MiB go up and come back down."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp

from proxy.devstack.processes import Registry, running_proxy

MiB = 1024 * 1024
BLOB = 256 * MiB
ALLOWED_GROWTH = 64 * MiB


def memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the most it was ever resident) in bytes: VmHWM catches a
    body held whole even if it was freed before anyone looked."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


async def pseudo_random(size: int, update: Callable[[bytes], None]) -> AsyncIterator[bytes]:
    """`size` bytes, 1 MiB at a time, fed to `update` as they go; never held whole. A counter
    in each chunk keeps it from repeating, so nothing on the way could compress it away."""
    block = os.urandom(MiB)
    for n in range(size // MiB):
        chunk = n.to_bytes(8, "big") + block[8:]
        update(chunk)
        yield chunk


async def test_256_mib_up_and_down_without_growing_the_proxy(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    pushed, pulled = hashlib.sha256(), hashlib.sha256()
    with running_proxy(tmp_path, registry.url) as proxy:
        pid = proxy.process.pid
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.get(f"{proxy.url}/v2/") as warm:
                assert warm.status == 200
            baseline = memory(pid)

            async with http.post(f"{proxy.url}/v2/{repo}/blobs/uploads/") as started:
                assert started.status == 202, await started.text()
                location = started.headers["Location"]
            async with http.patch(
                location,
                data=pseudo_random(BLOB, pushed.update),
                headers={"Content-Type": "application/octet-stream"},
            ) as patched:
                assert patched.status == 202, await patched.text()
                location = patched.headers["Location"]
            digest = "sha256:" + pushed.hexdigest()
            async with http.put(location, params={"digest": digest}) as done:
                assert done.status == 201, await done.text()
            after_upload = memory(pid)

            async with http.get(f"{proxy.url}/v2/{repo}/blobs/{digest}") as download:
                assert download.status == 200
                assert download.headers["Content-Length"] == str(BLOB)
                async for chunk in download.content.iter_chunked(MiB):
                    pulled.update(chunk)
            after_download = memory(pid)

    assert "sha256:" + pulled.hexdigest() == digest
    growth = {
        "upload": after_upload["VmHWM"] - baseline["VmHWM"],
        "download": after_download["VmHWM"] - baseline["VmHWM"],
    }
    report = f"baseline {baseline}, after upload {after_upload}, after download {after_download}"
    assert max(growth.values()) < ALLOWED_GROWTH, report
