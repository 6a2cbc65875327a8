"""An upstream that gained the Referrers API (an upgrade): its answers, merged with the index,
and not one write of the proxy's own sent to it.

The upstream is the stand-in OCI 1.1 registry of tests/harness/native_registry.py; everything
else in the suite runs against the real Distribution 2.8.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.app import make_app
from proxy.config import Settings, parse_upstream
from proxy.devstack.oci_client import INDEX, artifact_manifest, push_manifest, sha256
from proxy.devstack.processes import Redis
from proxy.index import open_index
from proxy.services.reindex import reindex
from tests.conftest import StartProxy
from tests.harness.native_registry import AUTH, TOKEN, NativeRegistry, running_native_registry

SUBJECT = b'{"schemaVersion":2}'
OLD = "application/vnd.example.old"
NEW = "application/vnd.example.new"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[NativeRegistry, str]]:
    async with running_native_registry() as started:
        yield started


@pytest.fixture
async def redis_url(redis_server: Redis) -> str:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return redis_server.url


@asynccontextmanager
async def served(upstream: str, **overrides: Any) -> AsyncIterator[str]:
    """A proxy stopped on leaving: its shutdown flushes the tag-schema writes it holds behind,
    so what it would ever write has reached the upstream by then."""
    settings = replace(Settings(upstream=parse_upstream(upstream)), **overrides)
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def tags(http: aiohttp.ClientSession, base: str, repo: str) -> list[str]:
    async with http.get(f"{base}/v2/{repo}/tags/list", headers=AUTH) as answer:
        assert answer.status == 200
        return list(orjson.loads(await answer.read())["tags"])


async def referrers(
    http: aiohttp.ClientSession, base: str, repo: str, subject: str, **query: str
) -> tuple[list[str], aiohttp.ClientResponse]:
    async with http.get(
        f"{base}/v2/{repo}/referrers/{subject}", params=query, headers=AUTH
    ) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == INDEX
        listed = [d["digest"] for d in orjson.loads(await answer.read())["manifests"]]
        return listed, answer


async def test_in_front_of_a_native_registry_the_proxy_writes_nothing_of_its_own(
    http: aiohttp.ClientSession, redis_url: str, upstream: tuple[NativeRegistry, str]
) -> None:
    """The issue's check: pre-existing and new referrers listed, the filter applied, and
    nothing written upstream by the proxy (tags/list straight at the registry)."""
    registry, url = upstream
    async with served(url, redis_url=redis_url, tag_write_delay=0.05) as legacy:
        assert (await push_manifest(http, legacy, "app", SUBJECT, "v1", headers=AUTH)).status == 201
        old = artifact_manifest(SUBJECT, artifact_type=OLD)
        pushed = await push_manifest(http, legacy, "app", old, headers=AUTH)
        assert pushed.headers["OCI-Subject"] == sha256(SUBJECT), "the proxy's, before the upgrade"
    before = await tags(http, url, "app")
    assert "sha256-" + sha256(SUBJECT)[7:] in before, "legacy mode wrote the tag-schema index"

    registry.native = True
    registry.writes.clear()
    new = artifact_manifest(SUBJECT, artifact_type=NEW)
    async with served(url, redis_url=redis_url, tag_write_delay=0.05) as proxy:
        pushed = await push_manifest(http, proxy, "app", new, headers=AUTH)
        assert pushed.status == 201
        assert pushed.headers["OCI-Subject"] == sha256(SUBJECT)
        assert pushed.headers["Location"].endswith(f"/v2/app/manifests/{sha256(new)}")
        listed, _ = await referrers(http, proxy, "app", sha256(SUBJECT))
        assert listed == [sha256(new), sha256(old)], "the upstream's, then the index's"
        listed, answer = await referrers(http, proxy, "app", sha256(SUBJECT), artifactType=NEW)
        assert listed == [sha256(new)]
        assert answer.headers["OCI-Filters-Applied"] == "artifactType"
        gone = await http.delete(f"{proxy}/v2/app/manifests/{sha256(new)}", headers=AUTH)
        assert gone.status == 202
    assert registry.writes == [
        ("PUT", f"/v2/app/manifests/{sha256(new)}"),
        ("DELETE", f"/v2/app/manifests/{sha256(new)}"),
    ], "the client's PUT by digest and DELETE, as sent; nothing of the proxy's"
    assert await tags(http, url, "app") == before


async def test_a_native_upstreams_pages_pass_through(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[NativeRegistry, str]
) -> None:
    registry, url = upstream
    registry.native, registry.page_size = True, 2
    proxy = await start_proxy(url)
    pushed = [artifact_manifest(SUBJECT, annotations={"n": str(n)}) for n in range(3)]
    for body in pushed:
        assert (await push_manifest(http, proxy, "app", body, headers=AUTH)).status == 201
    listed, answer = await referrers(http, proxy, "app", sha256(SUBJECT))
    assert listed == [sha256(body) for body in pushed[:2]]
    link = answer.headers["Link"]
    target = URL(proxy).join(URL(link[1 : link.index(">")]))
    assert str(target).startswith(f"{proxy}/v2/app/referrers/{sha256(SUBJECT)}?"), link
    async with http.get(target, headers=AUTH) as rest:
        assert [d["digest"] for d in orjson.loads(await rest.read())["manifests"]] == [
            sha256(pushed[2])
        ]
    assert registry.writes_to("app") == [
        ("PUT", f"/v2/app/manifests/{sha256(body)}") for body in pushed
    ]


async def test_a_write_settles_an_unknown_upstream_before_the_proxy_writes(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[NativeRegistry, str]
) -> None:
    """The start-up probe was challenged: the first attach asks with the pusher's credentials
    before anything of the proxy's would be written."""
    registry, url = upstream
    registry.native = True
    proxy = await start_proxy(url)
    assert registry.referrers_queries == 1, "the start-up probe, challenged"
    referrer = artifact_manifest(SUBJECT)
    assert (await push_manifest(http, proxy, "app", referrer, headers=AUTH)).status == 201
    assert registry.writes_to("app") == [("PUT", f"/v2/app/manifests/{sha256(referrer)}")]
    assert registry.referrers_queries == 2


async def test_an_upgrade_under_a_running_proxy_stops_its_writes(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[NativeRegistry, str]
) -> None:
    """A legacy upstream upgraded in place: the first OCI-Subject it answers settles it."""
    registry, url = upstream
    proxy = await start_proxy(url, tag_write_delay=0.0)
    first = artifact_manifest(SUBJECT, artifact_type=OLD)
    assert (await push_manifest(http, proxy, "app", first, headers=AUTH)).status == 201
    registry.native = True
    second, third = (artifact_manifest(SUBJECT, artifact_type=t) for t in (NEW, "x/y"))
    pushed = await push_manifest(http, proxy, "app", second, headers=AUTH)
    assert pushed.headers["Location"].endswith(f"/v2/app/manifests/{sha256(second)}")
    registry.writes.clear()
    assert (await push_manifest(http, proxy, "app", third, headers=AUTH)).status == 201
    assert registry.writes_to("app") == [("PUT", f"/v2/app/manifests/{sha256(third)}")]
    listed, _ = await referrers(http, proxy, "app", sha256(SUBJECT))
    assert listed == [sha256(second), sha256(third), sha256(first)]


async def test_after_an_upgrade_the_upstream_answer_is_merged_with_the_index(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    redis_url: str,
    upstream: tuple[NativeRegistry, str],
) -> None:
    registry, url = upstream
    before = await start_proxy(url, redis_url=redis_url)
    old = artifact_manifest(SUBJECT, artifact_type=OLD)
    pushed = await push_manifest(http, before, "app", old, headers=AUTH)
    assert pushed.headers["OCI-Subject"] == sha256(SUBJECT)

    registry.native = True
    after = await start_proxy(url, redis_url=redis_url)
    new = artifact_manifest(SUBJECT, artifact_type=NEW)
    assert (await push_manifest(http, after, "app", new, headers=AUTH)).status == 201
    listed, _ = await referrers(http, after, "app", sha256(SUBJECT))
    assert listed == [sha256(new), sha256(old)], "upstream's first, then the index's, no duplicates"
    listed, answer = await referrers(http, after, "app", sha256(SUBJECT), artifactType=OLD)
    assert answer.headers["OCI-Filters-Applied"] == "artifactType"
    assert listed == [sha256(old)]


async def test_upstream_challenge_passes_through_in_native_mode(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[NativeRegistry, str]
) -> None:
    registry, url = upstream
    registry.native = True
    proxy = await start_proxy(url)
    async with http.get(f"{proxy}/v2/app/referrers/{sha256(SUBJECT)}") as answer:
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="https://auth.example')
        assert b"manifests" not in await answer.read()


async def test_an_authorized_404_settles_that_the_upstream_has_no_api(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[NativeRegistry, str]
) -> None:
    registry, url = upstream
    proxy = await start_proxy(url)
    assert registry.referrers_queries == 1, "the start-up probe"
    referrer = artifact_manifest(SUBJECT, artifact_type=OLD)
    assert (await push_manifest(http, proxy, "app", referrer, headers=AUTH)).status == 201
    assert registry.referrers_queries == 2, "the attach asked, with the pusher's credentials"
    for _ in range(2):
        listed, _ = await referrers(http, proxy, "app", sha256(SUBJECT))
        assert listed == [sha256(referrer)]
    assert registry.referrers_queries == 2, "once settled, the upstream is not asked again"
    keep = "_referrer." + sha256(referrer).replace(":", "-")
    assert keep in await tags(http, url, "app"), "a legacy upstream gets its keep tag"


async def test_reindex_adds_no_keep_tags_there_and_can_import_its_answers(
    http: aiohttp.ClientSession, redis_url: str, upstream: tuple[NativeRegistry, str]
) -> None:
    registry, url = upstream
    registry.native, registry.page_size = True, 1
    referrers = [artifact_manifest(SUBJECT, artifact_type=t) for t in (OLD, NEW)]
    assert (await push_manifest(http, url, "app", SUBJECT, "v1", headers=AUTH)).status == 201
    # Straight to the registry, one by a tag the walk finds: the proxy's index knows nothing.
    for body, tag in zip(referrers, ("sbom", None), strict=True):
        assert (await push_manifest(http, url, "app", body, tag, headers=AUTH)).status == 201
    registry.writes.clear()
    settings = Settings(upstream=parse_upstream(url), redis_url=redis_url)
    assert settings.keep_tags, "on by default: still none added"
    walked, both = [sha256(referrers[0])], [sha256(body) for body in referrers]
    for import_native, indexed in ((False, walked), (True, both)):
        summary = await reindex(
            settings,
            repositories=["app"],
            auth=TOKEN,
            done=set(),
            marks=None,
            out=io.StringIO(),
            import_native=import_native,
        )
        assert (summary.keep_tags, summary.errors) == (0, 0)
        index = open_index(settings)
        page = await index.page("app", sha256(SUBJECT), (), 0, 10)
        await index.close()
        assert [orjson.loads(d)["digest"] for d in page.descriptors] == indexed
    assert registry.writes == []
