"""The lists the offline commands walk: only repository names go into the paths they ask for,
and a refused tag page is told apart from the whole list."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.services.registry_lists import WalkRefused, repositories, tags
from proxy.upstream.client import RegistryClient

CATALOG = ["app", "team/app", "../etc", "a?b", "UPPER", "x" * 300]


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async def catalog(request: web.Request) -> web.Response:
        return web.json_response({"repositories": CATALOG})

    async def tag_page(request: web.Request) -> web.Response:
        if request.query.get("last") == "v1":
            return web.json_response({"errors": []}, status=503)
        link = '</v2/app/tags/list?last=v1&n=1>; rel="next"'
        return web.json_response({"tags": ["v1"]}, headers={"Link": link})

    app = web.Application()
    app.router.add_get("/v2/_catalog", catalog)
    app.router.add_get("/v2/app/tags/list", tag_page)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        yield RegistryClient(session, URL(str(server.make_url("/"))).origin(), 1 << 20)


async def test_the_catalogs_names_that_are_no_repository_names_are_skipped(
    client: RegistryClient,
) -> None:
    assert await repositories(client, [], None) == ["app", "team/app"]


async def test_a_named_repository_must_be_a_repository_name(client: RegistryClient) -> None:
    assert await repositories(client, ["team/app"], None) == ["team/app"]
    with pytest.raises(WalkRefused, match="'a/../b'"):
        await repositories(client, ["app", "a/../b"], None)


async def test_a_refused_tag_page_keeps_what_was_read_and_says_it_is_not_all(
    client: RegistryClient,
) -> None:
    assert await tags(client, "app", None) == (["v1"], False)
