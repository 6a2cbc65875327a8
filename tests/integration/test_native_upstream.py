"""An upstream that gained the Referrers API (an upgrade): its answers, merged with the index.

No OCI 1.1 registry can be installed on these machines (Debian ships Distribution 2.8), so a small
stand-in plays the upgraded upstream; everything else in the suite runs against the real one.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.devstack.oci_client import INDEX, MANIFEST, artifact_manifest, push_manifest, sha256
from proxy.devstack.processes import Redis
from tests.conftest import StartProxy

SUBJECT = b'{"schemaVersion":2}'
OLD = "application/vnd.example.old"
NEW = "application/vnd.example.new"
AUTH = {"Authorization": "Bearer ok"}


@dataclass
class UpgradableRegistry:
    """Stores manifests; answers /referrers only once `native`, for manifests pushed since.
    Like most real registries it challenges anonymous readers (so the start-up probe cannot
    tell), and like Distribution it authenticates before it looks a manifest up."""

    native: bool = False
    listed: list[dict[str, object]] = field(default_factory=list)
    stored: dict[str, bytes] = field(default_factory=dict)
    referrers_queries: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/":
            return web.json_response({})
        authorized = request.headers.get("Authorization") == "Bearer ok"
        if request.method in ("GET", "HEAD") and "/manifests/" in request.path:
            if not authorized:
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="x"'})
            found = self.stored.get(request.path)
            if found is None:
                unknown = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
                return web.json_response(unknown, status=404)
            return web.Response(body=found, content_type="application/json")
        if request.method == "PUT" and "/manifests/" in request.path:
            body = await request.read()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.stored[request.path] = body
            document = orjson.loads(body)
            headers = {"Docker-Content-Digest": digest}
            known = any(listed["digest"] == digest for listed in self.listed)
            if self.native and "subject" in document and not known:
                headers["OCI-Subject"] = document["subject"]["digest"]
                self.listed.append(
                    {
                        "mediaType": MANIFEST,
                        "digest": digest,
                        "size": len(body),
                        "artifactType": document["artifactType"],
                    }
                )
            return web.Response(status=201, headers=headers)
        if "/referrers/" in request.path:
            self.referrers_queries += 1
            if not authorized:
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="x"'})
            if not self.native:
                return web.Response(status=404, text="404 page not found")
            body = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": self.listed})
            return web.Response(body=body, headers={"Content-Type": INDEX})
        return web.Response(status=404, text="404 page not found")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[UpgradableRegistry, str]]:
    registry = UpgradableRegistry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield registry, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_after_an_upgrade_the_upstream_answer_is_merged_with_the_index(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    redis_server: Redis,
    upstream: tuple[UpgradableRegistry, str],
) -> None:
    registry, url = upstream
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    before = await start_proxy(url, redis_url=redis_server.url)
    old = artifact_manifest(SUBJECT, artifact_type=OLD)
    pushed = await push_manifest(http, before, "app", old, headers=AUTH)
    assert pushed.headers["OCI-Subject"] == sha256(SUBJECT)

    registry.native = True
    after = await start_proxy(url, redis_url=redis_server.url)
    new = artifact_manifest(SUBJECT, artifact_type=NEW)
    assert (await push_manifest(http, after, "app", new, headers=AUTH)).status == 201
    auth = AUTH
    async with http.get(f"{after}/v2/app/referrers/{sha256(SUBJECT)}", headers=auth) as answer:
        assert answer.headers["Content-Type"] == INDEX
        listed = [d["digest"] for d in orjson.loads(await answer.read())["manifests"]]
    assert listed == [sha256(new), sha256(old)], "upstream's first, then the index's, no duplicates"
    async with http.get(
        f"{after}/v2/app/referrers/{sha256(SUBJECT)}", params={"artifactType": OLD}, headers=auth
    ) as answer:
        assert answer.headers["OCI-Filters-Applied"] == "artifactType"
        listed = [d["digest"] for d in orjson.loads(await answer.read())["manifests"]]
    assert listed == [sha256(old)]


async def test_upstream_challenge_passes_through_in_native_mode(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[UpgradableRegistry, str]
) -> None:
    registry, url = upstream
    registry.native = True
    proxy = await start_proxy(url)
    async with http.get(f"{proxy}/v2/app/referrers/{sha256(SUBJECT)}") as answer:
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="x"'
        assert b"manifests" not in await answer.read()


async def test_an_authorized_404_settles_that_the_upstream_has_no_api(
    http: aiohttp.ClientSession, start_proxy: StartProxy, upstream: tuple[UpgradableRegistry, str]
) -> None:
    registry, url = upstream
    proxy = await start_proxy(url)
    assert registry.referrers_queries == 1, "the start-up probe"
    referrer = artifact_manifest(SUBJECT, artifact_type=OLD)
    assert (await push_manifest(http, proxy, "app", referrer, headers=AUTH)).status == 201
    for _ in range(2):
        async with http.get(f"{proxy}/v2/app/referrers/{sha256(SUBJECT)}", headers=AUTH) as answer:
            assert answer.status == 200
            listed = [d["digest"] for d in orjson.loads(await answer.read())["manifests"]]
        assert listed == [sha256(referrer)]
    assert registry.referrers_queries == 2, "once settled, the upstream is not asked again"
