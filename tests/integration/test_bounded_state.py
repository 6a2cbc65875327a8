"""What one client can make the proxy hold: descriptor annotations are bounded (at the PUT, in
tag-schema indexes others wrote, in what was stored before the bound), and reads of subjects
nobody wrote to leave no state. Against the real registry and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    descriptor,
    legacy_tag,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, running_proxy
from proxy.index.redis import RedisIndex
from proxy.oci.manifest import IMAGE_MANIFEST, MAX_ANNOTATION_BYTES, Referrer
from tests.conftest import StartProxy
from tests.integration.test_streaming_memory import memory

MiB = 1024 * 1024
HUGE = {"blob": "x" * MiB}


async def listed(
    http: aiohttp.ClientSession, base: str, repo: str, subject: bytes
) -> list[dict[str, Any]]:
    async with http.get(f"{base}/v2/{repo}/referrers/{sha256(subject)}") as response:
        assert response.status == 200
        return list(orjson.loads(await response.read())["manifests"])


async def test_large_annotations_cost_nothing_in_answers(
    http: aiohttp.ClientSession, registry: Registry, repo: str, tmp_path: Path
) -> None:
    """Issue 12: 30 referrers with 1 MiB annotations, six concurrent referrers GETs, used to
    cost the proxy hundreds of MiB. Now each is listed without its annotations."""
    subject = await push_subject_image(http, registry.url, repo)
    with running_proxy(tmp_path, registry.url) as proxy:
        baseline = memory(proxy.process.pid)
        referrers = [
            artifact_manifest(subject, annotations={**HUGE, "n": str(n)}) for n in range(30)
        ]
        for referrer in referrers:
            assert (await push_manifest(http, proxy.url, repo, referrer)).status == 201
        answers = await asyncio.gather(*(listed(http, proxy.url, repo, subject) for _ in range(6)))
        after = memory(proxy.process.pid)
    for answer in answers:
        assert sorted(d["digest"] for d in answer) == sorted(sha256(r) for r in referrers)
        assert all("annotations" not in d for d in answer)
    growth = after["VmHWM"] - baseline["VmHWM"]
    assert growth < 48 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB"


async def test_descriptors_stored_before_the_bound_are_cut_in_answers(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    subject = await push_subject_image(http, registry.url, repo)
    index = RedisIndex(aioredis.Redis.from_url(redis_server.url))
    old = {"mediaType": IMAGE_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 9}
    try:
        await index.add(
            repo,
            Referrer(
                sha256(subject), old["digest"], None, orjson.dumps({**old, "annotations": HUGE})
            ),
        )
    finally:
        await index.close()
    proxy = await start_proxy(registry.url, redis_url=redis_server.url)
    assert await listed(http, proxy, repo, subject) == [old]


async def test_tag_schema_annotations_over_the_bound_are_left_out(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """What another client wrote (Distribution itself refuses annotations that are no string
    map: test_tagschema.py covers those, as another registry might hold them)."""
    subject = await push_subject_image(http, registry.url, repo)
    big, fine = (artifact_manifest(subject, annotations={"n": n}) for n in "12")
    for referrer in (big, fine):
        assert (await push_manifest(http, registry.url, repo, referrer)).status == 201
    entries = [
        descriptor(MANIFEST, big, annotations=HUGE),
        descriptor(MANIFEST, fine, annotations={"ok": "yes"}),
    ]
    body = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
    pushed = await push_manifest(
        http, registry.url, repo, body, legacy_tag(subject), media_type=INDEX
    )
    assert pushed.status == 201
    proxy = await start_proxy(registry.url)
    by_digest = {d["digest"]: d for d in await listed(http, proxy, repo, subject)}
    assert "annotations" not in by_digest[sha256(big)]
    assert by_digest[sha256(fine)]["annotations"] == {"ok": "yes"}


async def test_reads_of_unknown_subjects_leave_no_state_in_redis(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    await push_subject_image(http, registry.url, repo)
    proxy = await start_proxy(registry.url, redis_url=redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        before = {key async for key in client.scan_iter(f"*{repo}*")}
        for _ in range(50):
            subject = "sha256:" + uuid.uuid4().hex * 2
            async with http.get(f"{proxy}/v2/{repo}/referrers/{subject}") as response:
                assert response.status == 200
        assert {key async for key in client.scan_iter(f"*{repo}*")} == before
    finally:
        await client.aclose()


async def test_the_bound_is_a_setting(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    subject = await push_subject_image(http, registry.url, repo)
    notes = {"note": "x" * (2 * MAX_ANNOTATION_BYTES)}
    proxy = await start_proxy(registry.url, max_annotation_bytes=4 * MAX_ANNOTATION_BYTES)
    referrer = artifact_manifest(subject, annotations=notes)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    assert (await listed(http, proxy, repo, subject))[0]["annotations"] == notes


async def test_annotations_nested_300_deep_are_a_400_not_a_500(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    subject = await push_subject_image(http, registry.url, repo)
    nested: object = "leaf"
    for _ in range(300):
        nested = {"a": nested}
    document = orjson.loads(artifact_manifest(subject))
    document["annotations"] = {"a": nested}
    body = json.dumps(document).encode()
    proxy = await start_proxy(registry.url)
    answer = await push_manifest(http, proxy, repo, body)
    assert answer.status == 400
    async with http.get(f"{registry.url}/v2/{repo}/manifests/{sha256(body)}") as direct:
        assert direct.status == 404, "nothing forwarded"
