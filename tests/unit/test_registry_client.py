"""The upstream client's reading of Link headers (aiohttp's parser, not ours): only the rel="next"
page is followed, and only its path, so the next page is always asked of the configured
upstream."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.upstream.client import RegistryClient

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
