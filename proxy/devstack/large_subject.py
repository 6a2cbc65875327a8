"""A subject with many referrers, seeded as fast as the registry takes them: what a legacy
client leaves (referrers pushed by digest and one tag-schema index listing them, close to the
registry's 4 MiB manifest limit), plus referrers attached through the proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp
import orjson

from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    descriptor,
    legacy_tag,
    push_manifest,
)

ARTIFACT_TYPE = "application/vnd.example.sbom.v1"
TAG_INDEX_LIMIT = 4 * 1024 * 1024  # Distribution 2.8 refuses larger manifests
PAD = 200  # annotation bytes per legacy referrer, so ~10,000 of them fill the limit


async def bounded(concurrency: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Run `jobs`, at most `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


def legacy_referrer(subject: bytes, n: int) -> tuple[bytes, dict[str, object]]:
    annotations = {"org.example.n": f"{n:0{PAD}d}"}
    body = artifact_manifest(subject, artifact_type=ARTIFACT_TYPE, annotations=annotations)
    return body, descriptor(MANIFEST, body, artifactType=ARTIFACT_TYPE, annotations=annotations)


async def push_all(
    http: aiohttp.ClientSession, base: str, repo: str, bodies: list[bytes], concurrency: int
) -> None:
    """PUT each manifest by digest; any answer but 201 stops the seeding."""

    def job(body: bytes) -> Callable[[], Awaitable[None]]:
        async def push() -> None:
            answer = await push_manifest(http, base, repo, body)
            if answer.status != 201:
                raise RuntimeError(f"PUT {base} {repo}: {answer.status}")

        return push

    await bounded(concurrency, (job(body) for body in bodies))


@dataclass(frozen=True)
class LegacySeed:
    digests: list[str]
    index_bytes: int
    seconds: float


async def seed_legacy_index(
    http: aiohttp.ClientSession,
    registry: str,
    repo: str,
    subject: bytes,
    fill: float = 0.99,
    concurrency: int = 32,
    most: int | None = None,
) -> LegacySeed:
    """Referrers pushed straight to the registry and a tag-schema index listing as many as fit
    in `fill` of the 4 MiB limit (or `most`), as a legacy client leaves them."""
    started = time.monotonic()
    head = len(orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}))
    bodies: list[bytes] = []
    listed: list[dict[str, object]] = []
    size = head
    while True:
        body, entry = legacy_referrer(subject, len(bodies))
        size += len(orjson.dumps(entry)) + 1
        if size > fill * TAG_INDEX_LIMIT or len(bodies) == most:
            break
        bodies.append(body)
        listed.append(entry)
    await push_all(http, registry, repo, bodies, concurrency)
    index = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed})
    tagged = await push_manifest(http, registry, repo, index, legacy_tag(subject), INDEX)
    if tagged.status != 201:
        raise RuntimeError(f"the legacy tag-schema index was refused: {tagged.status}")
    return LegacySeed(
        [str(entry["digest"]) for entry in listed], len(index), time.monotonic() - started
    )
