"""The upstream client's reading of Link headers (aiohttp's parser, not ours): only the rel="next"
page is followed, and only its path, so the next page is always asked of the configured
upstream."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.oci.errors import UpstreamRefused
from proxy.upstream.client import RegistryClient, page_items

NEXT = "/v2/a/tags/list?last=y&n=1"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (f'</v2/a/tags/list?last=x&n=1>; rel="prev", <{NEXT}>; rel="next"', NEXT),
        (f'<{NEXT}>; rel="next"', NEXT),
        (f'<http://elsewhere.example:1{NEXT}>; rel="next"', NEXT),
        ('</v2/a/tags/list?last=x&n=1>; rel="prev"', None),
        ('</elsewhere?x=1>; rel="next"', None),
        (None, None),
    ],
)
async def test_only_the_next_page_path_is_followed(link: str | None, expected: str | None) -> None:
    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"tags": []}, headers={"Link": link} if link else None)

    app = web.Application()
    app.router.add_get("/v2/a/tags/list", tags)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = RegistryClient(session, URL(str(server.make_url("/"))).origin(), 1 << 20)
        answer = await client.call("GET", "/v2/a/tags/list", auth=None)
    assert answer.next_page == expected


@pytest.mark.parametrize(
    "link",
    [
        '<http://registry.example:99999/v2/>; rel="alternate"',  # port out of range
        '<http://[::1/v2/>; rel="describedby"',  # bad IPv6 literal
    ],
)
async def test_a_malformed_link_on_a_manifest_answer_is_no_crash(link: str) -> None:
    """Every call reads the Link header: one no URL can be made of, on any answer, pages
    nothing (it used to raise ValueError, a 500 to the client)."""

    async def manifest(request: web.Request) -> web.Response:
        return web.json_response({"schemaVersion": 2}, headers={"Link": link})

    app = web.Application()
    app.router.add_get("/v2/a/manifests/v1", manifest)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = RegistryClient(session, URL(str(server.make_url("/"))).origin(), 1 << 20)
        answer = await client.get_manifest("a", "v1", None)
    assert answer.status == 200
    assert answer.next_page is None


@pytest.mark.parametrize(
    "body",
    [b"<html>catalog</html>", b"[]", b'{"tags": "v1"}', b'{"tags": [1, 2]}', b'{"tags": {}}'],
)
async def test_a_list_page_that_is_no_list_of_names_is_a_refusal(body: bytes) -> None:
    """Was: a registry's 200 that is no JSON object of strings raised from deep inside the walk
    (JSONDecodeError, AttributeError) and ended reindex, prune or legacy-artifacts with a
    traceback; or a number went on to be used as a tag."""

    async def tags(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/a/tags/list", tags)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = RegistryClient(session, URL(str(server.make_url("/"))).origin(), 1 << 20)
        with pytest.raises(UpstreamRefused, match="no list of tags"):
            [tag async for tag in client.listed("/v2/a/tags/list", "tags", None)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"tags": ["v1", "v2"]}', ["v1", "v2"]), (b'{"tags": null}', []), (b'{"name": "a"}', [])],
)
def test_list_page_items(body: bytes, expected: list[str]) -> None:
    """Distribution answers `"tags": null` for a repository whose tags were all deleted."""
    assert page_items(body, "tags") == expected
