"""The lists the offline commands walk: only repository names go into the paths they ask for,
and a refused tag page is told apart from the whole list."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.services import registry_lists
from proxy.services.registry_lists import WalkRefused, repositories, tags
from proxy.services.reindex import Reindexer
from proxy.upstream import client as client_module
from proxy.upstream.client import RegistryClient

CATALOG = ["app", "team/app", "../etc", "a?b", "UPPER", "x" * 300, "app"]
NEXT_LINKS = {  # each a next page the walk cannot ask, or may not
    "outside": '</elsewhere/tags/list?n=2>; rel="next"',
    "outside-nofollow": '</elsewhere/tags/list?n=2>; rel="next nofollow"',
    "dot-segments": '</v2/link/dot-segments/tags/list/../../../secret/tags/list?n=2>; rel="next"',
    "encoded": '</v2%2Flink%2Fencoded/tags/list?n=2>; rel="next"',
    "another-list": '</v2/secret/tags/list?n=2>; rel="next"',
    "no-url": '<http://[::1/v2/link/no-url/tags/list?n=2>; rel="next"',
}
HOSTILE_TAGS = ["v1", "../../other/manifests/v1", "a?b", "v1\r\nX-Injected: 1", "", "v2"]


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async def catalog(request: web.Request) -> web.Response:
        return web.json_response({"repositories": CATALOG})

    async def tag_page(request: web.Request) -> web.Response:
        if request.query.get("last") == "v1":
            return web.json_response({"errors": []}, status=503)
        link = '</v2/app/tags/list?last=v1&n=1>; rel="next"'
        return web.json_response({"tags": ["v1"]}, headers={"Link": link})

    async def same_page(request: web.Request) -> web.Response:
        link = '</v2/loop/tags/list?last=v1>; rel="next"'
        return web.json_response({"tags": ["v1"]}, headers={"Link": link})

    async def endless(request: web.Request) -> web.Response:
        n = int(request.query.get("last", "0")) + 1
        link = f'</v2/endless/tags/list?last={n}>; rel="next"'
        return web.json_response({"tags": [f"v{n}"]}, headers={"Link": link})

    async def hostile(request: web.Request) -> web.Response:
        return web.json_response({"tags": HOSTILE_TAGS})

    async def linked(request: web.Request) -> web.Response:
        link = NEXT_LINKS[request.match_info["case"]]
        return web.json_response({"tags": ["v1"]}, headers={"Link": link})

    async def cut(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/v2/_catalog", catalog)
    app.router.add_get("/v2/app/tags/list", tag_page)
    app.router.add_get("/v2/loop/tags/list", same_page)
    app.router.add_get("/v2/endless/tags/list", endless)
    app.router.add_get("/v2/hostile/tags/list", hostile)
    app.router.add_get("/v2/link/{case}/tags/list", linked)
    app.router.add_get("/v2/secret/tags/list", hostile)  # a list of another repository
    app.router.add_get("/v2/cut/tags/list", cut)
    app.router.add_get("/v2/readable/tags/list", hostile)
    app.router.add_get("/v2/readable/manifests/{reference}", cut)
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


async def test_a_list_that_goes_round_or_never_ends_is_not_all(
    client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a Link back to a page already read, or pages past MAX_PAGES, ended the
    list quietly as if complete, and `legacy-artifacts --delete` deleted by digest on it (a
    delete by digest takes every tag naming the manifest, also those never read)."""
    monkeypatch.setattr(client_module, "MAX_PAGES", 5)
    assert await tags(client, "loop", None) == (["v1"], False)
    assert await tags(client, "endless", None) == ([f"v{n}" for n in range(1, 6)], False)


async def test_tag_names_that_are_no_tags_are_skipped_and_the_list_is_not_all(
    client: RegistryClient,
) -> None:
    """Found by review: a hostile registry's `../` tag sent a walk's read to another repository,
    and a CR/LF one ended it with a traceback."""
    assert await tags(client, "hostile", None) == (["v1", "v2"], False)


@pytest.mark.parametrize("case", NEXT_LINKS)
async def test_a_next_page_the_walk_cannot_ask_makes_the_list_not_all(
    client: RegistryClient, case: str
) -> None:
    """Found by review: a rel="next" link outside /v2/, with a second relation, or no URL ended
    the list as complete; one to another repository's list was followed and merged."""
    assert await tags(client, f"link/{case}", None) == (["v1"], False)


async def test_a_list_cut_off_is_not_all_and_a_catalog_cut_off_refuses_the_run(
    client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a dropped connection (or a timeout, or a page over the size bound) ended
    reindex, prune and legacy-artifacts with a traceback."""
    assert await tags(client, "cut", None) == ([], False)
    monkeypatch.setattr(registry_lists, "CATALOG", "/v2/cut/tags/list")
    with pytest.raises(WalkRefused, match="ServerDisconnectedError"):
        await repositories(client, [], None)


async def test_a_repository_read_in_part_is_not_checkpointed(client: RegistryClient) -> None:
    """Found by review: with --resume, a repository whose tag list was cut was marked finished,
    and the next run skipped it with exit code 0."""
    walker = Reindexer(client, None, auth=None, progress=io.StringIO())
    finished = [name async for name in walker.run(["app", "hostile"], set())]
    assert finished == []
    assert walker.summary.errors >= 2


async def test_a_manifest_read_cut_off_is_an_error_and_the_walk_goes_on(
    client: RegistryClient,
) -> None:
    """Found by review: one connection reset under a manifest read ended the whole reindex with a
    traceback; now it counts as an error of its repository, which --resume walks again."""
    walker = Reindexer(client, None, auth=None, progress=io.StringIO())
    finished = [name async for name in walker.run(["readable"], set())]
    assert finished == []
    assert walker.summary.errors == 3  # the list (names that are no tags), v1 and v2
