"""What the scenarios push and read: big blobs that never sit in memory, many referrers pushed
concurrently, and referrers lists walked page by page."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
import orjson
from yarl import URL

from bench.procfs import MiB
from proxy.devstack.large_subject import bounded
from proxy.devstack.oci_client import artifact_manifest, push_manifest, sha256

MAX_PAGES = 100_000


def session(connections: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), auto_decompress=False
    )


def _blocks(size: int) -> Iterable[bytes]:
    """`size` bytes (a multiple of 1 MiB) that do not repeat, so nothing can compress them."""
    block = os.urandom(MiB)
    for n in range(size // MiB):
        yield n.to_bytes(8, "big") + block[8:]


def write_blob_file(path: Path, size: int) -> str:
    """Write a blob to `path` and return its digest."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for block in _blocks(size):
            digest.update(block)
            out.write(block)
    return "sha256:" + digest.hexdigest()


async def start_upload(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    """POST a blob upload; the absolute URL to PUT its body to."""
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as started:
        if started.status != 202:
            raise RuntimeError(f"upload to {base} refused: {started.status}")
        return str(URL(base).join(URL(started.headers["Location"], encoded=True)))


async def push_big_blob(http: aiohttp.ClientSession, base: str, repo: str, size: int) -> str:
    """Stream a blob of `size` bytes up (hashed on the way) and return its digest."""
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for block in _blocks(size):
            digest.update(block)
            yield block

    location = await start_upload(http, base, repo)
    async with http.patch(location, data=body()) as patched:
        if patched.status != 202:
            raise RuntimeError(f"blob upload failed: {patched.status}")
        location = str(URL(base).join(URL(patched.headers["Location"], encoded=True)))
    blob = "sha256:" + digest.hexdigest()
    async with http.put(location, params={"digest": blob}) as done:
        if done.status != 201:
            raise RuntimeError(f"blob commit failed: {done.status} {await done.text()}")
    return blob


def referrer(subject: bytes, n: int) -> bytes:
    return artifact_manifest(subject, annotations={"org.example.n": str(n)})


async def attach(
    http: aiohttp.ClientSession,
    base: str,
    repo: str,
    subject: bytes,
    count: int,
    concurrency: int,
    first: int = 0,
) -> list[str]:
    """Push `count` referrers of `subject` concurrently; their digests. Setup must not fail
    quietly, so any answer but 201 stops the run."""
    pushed = [referrer(subject, n) for n in range(first, first + count)]

    def job(body: bytes) -> Callable[[], Awaitable[None]]:
        async def push() -> None:
            answer = await push_manifest(http, base, repo, body)
            if answer.status != 201:
                raise RuntimeError(f"attach through {base} answered {answer.status}")

        return push

    await bounded(concurrency, (job(body) for body in pushed))
    return [sha256(body) for body in pushed]


async def referrer_pages(
    http: aiohttp.ClientSession, base: str, repo: str, subject_digest: str
) -> tuple[list[str], list[str]]:
    """Walk the referrers list by its Link headers: (every digest listed, every page's URL)."""
    url: str | None = f"{base}/v2/{repo}/referrers/{subject_digest}"
    digests: list[str] = []
    pages: list[str] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        async with http.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status}")
            digests += [d["digest"] for d in orjson.loads(await response.read())["manifests"]]
            link = response.headers.get("Link")
        pages.append(url)
        url = str(URL(base).join(URL(link[1 : link.index(">")], encoded=True))) if link else None
    return digests, pages
