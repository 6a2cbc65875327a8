"""`referrers-proxy reindex` rebuilds a wiped Redis from what the registry holds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis

from proxy.config import FallbackMode, parse_upstream
from proxy.devstack.oci_client import (
    MANIFEST,
    artifact_manifest,
    basic_auth,
    legacy_attach,
    listed_referrers,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, free_port
from proxy.index import RedisIndex
from proxy.services.reindex import Reindexer
from proxy.upstream.client import Answer, RegistryClient
from tests.conftest import AUTH_PASSWORD, AUTH_USER, StartProxy


async def run_reindex(
    *args: str, env: dict[str, str] | None = None, seconds: float = 120
) -> tuple[int, str, str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "reindex", *args],
        capture_output=True,
        text=True,
        timeout=seconds,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


async def wipe(redis_server: Redis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()


async def test_reindex_rebuilds_a_wiped_redis(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    own_registry: Registry,
    redis_server: Redis,
    tmp_path: Path,
) -> None:
    await wipe(redis_server)
    writer = await start_proxy(own_registry.url, redis_url=redis_server.url)
    repo, other = "team/app", "team/other"
    image = await push_subject_image(http, writer, repo)
    via_proxy = [artifact_manifest(image, annotations={"n": str(n)}) for n in range(3)]
    for manifest in via_proxy:
        assert (await push_manifest(http, writer, repo, manifest)).status == 201
    # A legacy client's read-modify-write of the tag-schema index must not race the proxy's
    # write behind the attaches (the schema has no compare-and-set): it comes after, as a
    # client of the registry alone would.
    _, listed, _ = await settled_tag_index(
        http, own_registry.url, repo, image, [sha256(m) for m in via_proxy], any_order=True
    )
    assert sorted(d["digest"] for d in listed) == sorted(sha256(m) for m in via_proxy)
    legacy = await legacy_attach(http, own_registry.url, repo, image, 9)
    tagged = artifact_manifest(image, annotations={"tagged": "yes"})
    assert (await push_manifest(http, own_registry.url, repo, tagged, "signature")).status == 201
    other_image = await push_subject_image(http, writer, other)
    other_referrer = artifact_manifest(other_image)
    assert (await push_manifest(http, writer, other, other_referrer)).status == 201
    expected = {sha256(m) for m in [*via_proxy, legacy, tagged]}

    await wipe(redis_server)
    index_only = await start_proxy(
        own_registry.url, redis_url=redis_server.url, fallback_tags=FallbackMode.OFF
    )
    assert await listed_referrers(http, index_only, repo, image) == []

    checkpoint = tmp_path / "reindex.done"
    args = ("--upstream", own_registry.url, "--redis-url", redis_server.url)
    code, out, err = await run_reindex(*args, "--resume", str(checkpoint))
    assert code == 0, err
    assert "repositories 2," in out
    assert "referrers indexed 6," in out
    assert "errors 0" in out
    assert set(await listed_referrers(http, index_only, repo, image)) == expected
    assert await listed_referrers(http, index_only, other, other_image) == [sha256(other_referrer)]
    started, *finished = checkpoint.read_text().splitlines()
    assert (started, sorted(finished)) == ("# reindex", sorted([repo, other]))

    code, out, _ = await run_reindex(*args, "--resume", str(checkpoint))
    assert (code, "resumed past 2" in out, "repositories 0," in out) == (0, True, True)
    code, out, _ = await run_reindex(*args, "--repository", repo)
    assert code == 0
    assert "repositories 1," in out
    listed_again = await listed_referrers(http, index_only, repo, image)
    assert len(listed_again) == len(set(listed_again)) == len(expected), "idempotent"


async def test_reindex_with_basic_auth_and_without(
    http: aiohttp.ClientSession, auth_registry: Registry, redis_server: Redis
) -> None:
    args = ("--upstream", auth_registry.url, "--redis-url", redis_server.url)
    code, _, err = await run_reindex(*args)
    assert code == 1
    assert "401" in err
    env = {
        "REFERRERS_PROXY_UPSTREAM_USERNAME": AUTH_USER,
        "REFERRERS_PROXY_UPSTREAM_PASSWORD": AUTH_PASSWORD,
    }
    code, out, err = await run_reindex(*args, env=env)
    assert code == 0, err
    assert "errors 0" in out
    async with http.get(
        f"{auth_registry.url}/v2/_catalog", headers=basic_auth(AUTH_USER, AUTH_PASSWORD)
    ) as r:
        repositories = orjson.loads(await r.read())["repositories"]
    assert f"repositories {len(repositories)}," in out


async def test_a_delete_during_the_reindex_stays_deleted(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    """Found by review: the walk read a legacy referrer, a client deleted it through the proxy,
    then the walk recorded it again (lifting the tombstone) and its keep-tag PUT re-created the
    manifest. The walk's client is the real one; only the moment of the delete is chosen, right
    after the walk's read."""
    proxy = await start_proxy(registry.url, redis_url=redis_server.url)
    image = await push_subject_image(http, proxy, repo)
    legacy = await legacy_attach(http, registry.url, repo, image, 1)
    digest = sha256(legacy)
    assert await listed_referrers(http, proxy, repo, image) == [digest]
    index = RedisIndex(aioredis.Redis.from_url(redis_server.url))
    deletes: list[int] = []
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, parse_upstream(registry.url), 64 * 1024 * 1024)
        read = client.get_manifest

        async def read_then_deleted(
            name: str, reference: str, auth: str | None, etag: str | None = None
        ) -> Answer:
            answer = await read(name, reference, auth, etag)
            if reference == digest and not deletes:
                async with http.delete(f"{proxy}/v2/{name}/manifests/{digest}") as gone:
                    deletes.append(gone.status)
            return answer

        client.get_manifest = read_then_deleted  # type: ignore[method-assign]
        walker = Reindexer(client, index, auth=None, keep_tags=True)
        async for _ in walker.run([repo], set()):
            pass
    await index.close()
    assert deletes == [202]
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST}
    ) as after:
        assert after.status == 404, "the keep-tag PUT must not bring it back"
    assert await listed_referrers(http, proxy, repo, image) == []


async def test_an_index_down_ends_a_walk_with_a_message_not_a_traceback(
    http: aiohttp.ClientSession, registry: Registry, repo: str
) -> None:
    """Found by review: a registry or index failing under reindex, prune or legacy-artifacts
    ended it with a Python traceback."""
    image = await push_subject_image(http, registry.url, repo)
    sbom = artifact_manifest(image)
    assert (await push_manifest(http, registry.url, repo, sbom, "sbom")).status == 201
    down = f"redis://127.0.0.1:{free_port()}/0"
    args = ("--upstream", registry.url, "--repository", repo, "--redis-url", down)
    code, _, err = await run_reindex(*args)
    assert code == 1
    assert "Traceback" not in err
    assert "referrers-proxy reindex: IndexUnavailable: index" in err
