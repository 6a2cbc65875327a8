"""One subject with 20,000 referrers: a legacy client's tag-schema index close to the registry's
4 MiB manifest limit, and the rest attached through the proxy. Was: past the limit, every attach
answered 502 forever and a fresh index lost the referrers recorded meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.devstack.large_subject import TAG_INDEX_LIMIT, push_all, seed_legacy_index
from proxy.devstack.oci_client import (
    INDEX,
    artifact_manifest,
    legacy_tag,
    push_manifest,
    push_subject_image,
    read_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, running_proxy, running_registry
from tests.integration.test_reindex import run_reindex

REFERRERS = 20_000


async def walk(http: aiohttp.ClientSession, proxy: str, repo: str, subject: str) -> list[str]:
    """Every digest the Referrers API lists, page by page."""
    url: str | None = f"{proxy}/v2/{repo}/referrers/{subject}"
    listed: list[str] = []
    for _ in range(1000):
        if url is None:
            return listed
        async with http.get(url) as response:
            assert response.status == 200
            listed += [d["digest"] for d in (await response.json(content_type=None))["manifests"]]
            link = response.headers.get("Link")
        url = proxy + link[1 : link.index(">")] if link else None
    raise AssertionError("pagination did not end")


# 20,000 referrers take ~90 s alone with the registry's storage on a tmpfs (`make test`), up to
# twice that on a disk or a shared machine; the limit is for hangs.
@pytest.mark.timeout(420)
async def test_twenty_thousand_referrers_on_one_subject(
    http: aiohttp.ClientSession, redis_server: Redis, tmp_path: Path
) -> None:
    repo = "big/app"
    flush = aioredis.Redis.from_url(redis_server.url)
    await flush.flushdb()
    with (
        running_registry(tmp_path / "registry") as registry,
        running_proxy(tmp_path, registry.url, "--redis-url", redis_server.url) as proxy,
    ):
        image = await push_subject_image(http, registry.url, repo)
        legacy = await seed_legacy_index(http, registry.url, repo, image)
        assert legacy.index_bytes > 0.98 * TAG_INDEX_LIMIT
        ours = [
            artifact_manifest(image, annotations={"via": "proxy", "n": str(n)})
            for n in range(REFERRERS - len(legacy.digests))
        ]
        await push_all(http, proxy.url, repo, ours, concurrency=32)
        late = artifact_manifest(image, annotations={"via": "proxy", "n": "last"})
        assert (await push_manifest(http, proxy.url, repo, late)).status == 201
        everything = [*legacy.digests, *(sha256(m) for m in ours), sha256(late)]
        listed = await walk(http, proxy.url, repo, sha256(image))
        assert len(listed) == len(set(listed)) == REFERRERS + 1
        assert set(listed) == set(everything)
        # The registry's copy keeps the legacy client's list, and adds what fits under the limit.
        for _ in range(100):
            status, in_tag, _ = await read_tag_index(http, registry.url, repo, image)
            copied = [d["digest"] for d in in_tag]
            if len(copied) > len(legacy.digests):
                break
            await asyncio.sleep(0.1)
        assert copied[: len(legacy.digests)] == legacy.digests
        assert len(legacy.digests) < len(copied) < len(everything)
        assert set(copied) <= set(everything)
        async with http.get(
            f"{registry.url}/v2/{repo}/manifests/{legacy_tag(image)}", headers={"Accept": INDEX}
        ) as response:
            assert len(await response.read()) <= TAG_INDEX_LIMIT

        await flush.flushdb()
        code, out, err = await run_reindex(
            "--upstream",
            registry.url,
            "--repository",
            repo,
            "--redis-url",
            redis_server.url,
            seconds=600,
        )
        assert code == 0, err
        assert f"referrers indexed {REFERRERS + 1}," in out
        assert f"keep tags added {len(legacy.digests)}," in out, "the legacy ones get theirs"
        with running_proxy(
            tmp_path / "fresh", registry.url, "--redis-url", redis_server.url
        ) as fresh:
            relisted = await walk(http, fresh.url, repo, sha256(image))
        assert sorted(relisted) == sorted(everything)
        assert (await read_tag_index(http, registry.url, repo, image))[0] == 200
    await flush.aclose()
