"""Upstream faults a real registry cannot make on demand, injected by a small fake upstream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.devstack.oci_client import (
    artifact_manifest,
    listed_referrers,
    push_blob,
    push_manifest,
    push_subject_image,
    read_tag_index,
    sha256,
)
from proxy.devstack.processes import Registry, free_port
from tests.conftest import StartProxy

BLOB = "sha256:" + "0" * 64


async def serve_fake(handler: web.RequestHandler, port: int = 0) -> TestServer:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


def oci_code(body: bytes) -> str:
    return str(orjson.loads(body)["errors"][0]["code"])


async def test_unreachable_upstream_is_502_then_recovers(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    port = free_port()
    proxy = await start_proxy(f"http://127.0.0.1:{port}")
    async with http.get(f"{proxy}/v2/") as response:
        assert response.status == 502
        assert response.content_type == "application/json"
        assert oci_code(await response.read()) == "UNAVAILABLE"

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Docker-Distribution-Api-Version": "registry/2.0"})

    upstream = await serve_fake(healthy, port)
    try:
        async with http.get(f"{proxy}/v2/") as response:
            assert response.status == 200
    finally:
        await upstream.close()


async def test_slow_upstream_is_504_and_other_requests_still_served(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    release = asyncio.Event()

    async def slow_then_fast(request: web.Request) -> web.Response:
        if request.path.endswith("/slow"):
            await release.wait()
        return web.Response(text="ok")

    upstream = await serve_fake(slow_then_fast)
    try:
        proxy = await start_proxy(str(upstream.make_url("")), read_timeout=0.3)
        async with http.get(f"{proxy}/v2/x/slow") as response:
            assert response.status == 504
            assert oci_code(await response.read()) == "UNAVAILABLE"
        async with http.get(f"{proxy}/v2/x/fast") as response:
            assert (response.status, await response.text()) == (200, "ok")
    finally:
        release.set()
        await upstream.close()


async def test_upstream_5xx_and_429_pass_through(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    async def busy(request: web.Request) -> web.Response:
        if request.path.endswith("/limited"):
            return web.Response(status=429, headers={"Retry-After": "7"}, text="slow down")
        return web.Response(status=503, text="maintenance")

    upstream = await serve_fake(busy)
    try:
        proxy = await start_proxy(str(upstream.make_url("")))
        async with http.get(f"{proxy}/v2/x/limited") as response:
            assert (response.status, response.headers["Retry-After"]) == (429, "7")
        async with http.get(f"{proxy}/v2/x/down") as response:
            assert (response.status, await response.text()) == (503, "maintenance")
    finally:
        await upstream.close()


async def test_redirect_to_blob_storage_is_passed_not_followed(
    http: aiohttp.ClientSession, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a client's request nor the proxy's own start-up probe follows a redirect."""
    seen: list[str] = []

    async def redirecting(request: web.Request) -> web.Response:
        seen.append(request.path)
        raise web.HTTPTemporaryRedirect("https://blobs.example.invalid/data?sig=abc")

    upstream = await serve_fake(redirecting)
    try:
        proxy = await start_proxy(str(upstream.make_url("")))
        async with http.get(f"{proxy}/v2/x/blobs/{BLOB}", allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == "https://blobs.example.invalid/data?sig=abc"
        assert seen[-1] == f"/v2/x/blobs/{BLOB}"
        assert len(seen) == 2, "the start-up probe, then the client's request: nothing else"
        assert "blobs.example.invalid" not in caplog.text
    finally:
        await upstream.close()


async def test_upstream_reset_mid_body_truncates_the_client_connection(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    async def dies_mid_body(request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/":
            return web.Response(text="{}")
        response = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return response

    upstream = await serve_fake(dies_mid_body)
    try:
        proxy = await start_proxy(str(upstream.make_url("")))
        async with http.get(f"{proxy}/v2/x/blobs/{BLOB}") as response:
            assert response.status == 200
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError:
                body = None
        assert body is None, "a truncated body must not look complete"
        async with http.get(f"{proxy}/v2/") as response:
            assert response.status == 200
    finally:
        await upstream.close()


async def test_upstream_reset_mid_upload_is_a_clean_error(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    async def dies_while_receiving(request: web.Request) -> web.Response:
        if request.method == "PATCH":
            await request.content.readexactly(64 * 1024)
            assert request.transport is not None
            request.transport.abort()
        return web.Response(text="{}")

    upstream = await serve_fake(dies_while_receiving)
    try:
        proxy = await start_proxy(str(upstream.make_url("")))

        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"z" * (64 * 1024)

        try:
            async with http.patch(f"{proxy}/v2/x/blobs/uploads/u", data=body()) as response:
                status = response.status
                payload = await response.read()
        except aiohttp.ClientError:
            status, payload = 0, b""
        assert status in (0, 502), "a clean error or a cut connection, never a success"
        if status == 502:
            assert oci_code(payload) == "UNAVAILABLE"
        async with http.get(f"{proxy}/v2/") as response:
            assert response.status == 200, "the proxy keeps serving"
    finally:
        await upstream.close()


async def test_a_client_vanishing_mid_download_harms_nothing(
    http: aiohttp.ClientSession, proxy: str, repo: str
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    digest = await push_blob(http, proxy, repo, data)
    url = URL(proxy)
    for _ in range(5):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readexactly(64 * 1024)
        writer.transport.abort()
    async with http.get(f"{proxy}/v2/{repo}/blobs/{digest}") as response:
        assert await response.read() == data


_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})


async def test_a_delete_done_but_answered_500_still_leaves_the_index(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """Distribution 2.8 deletes a manifest, then scans every tag to untag it, and answers 500
    "invalid checksum digest format" when a tag is being rewritten at that moment (seen in the
    soak). The race cannot be timed on demand, so a shim in front of the real registry answers
    500 after the real delete; the proxy relays it and still forgets the referrer."""

    async def shim(request: web.Request) -> web.Response:
        async with http.request(
            request.method,
            URL(registry.url + request.raw_path, encoded=True),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            if request.method == "DELETE" and upstream.status == 202:
                return web.json_response(
                    {"errors": [{"code": "UNKNOWN", "message": "invalid checksum digest format"}]},
                    status=500,
                )
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=body, headers=headers)

    upstream = await serve_fake(shim)
    try:
        proxy = await start_proxy(str(upstream.make_url("")))
        image = await push_subject_image(http, registry.url, repo)
        kept, deleted = (artifact_manifest(image, annotations={"n": str(n)}) for n in (1, 2))
        for manifest in (kept, deleted):
            assert (await push_manifest(http, proxy, repo, manifest)).status == 201
        async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(deleted)}") as response:
            assert response.status == 500, "the registry's answer is relayed"
        async with http.get(f"{registry.url}/v2/{repo}/manifests/{sha256(deleted)}") as gone:
            assert gone.status == 404
        assert await listed_referrers(http, proxy, repo, image) == [sha256(kept)]
        _, in_tag, _ = await read_tag_index(http, registry.url, repo, image)
        assert [d["digest"] for d in in_tag] == [sha256(kept)]
    finally:
        await upstream.close()
