"""The aiohttp application: routes, shared state, and the resources it opens and closes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.access import PullAccess
from proxy.config import Settings
from proxy.errors import Handler, error_middleware
from proxy.fallback import FallbackTags
from proxy.forward import Forwarder
from proxy.index import IndexStore, IndexUnavailable, open_index
from proxy.paths import MAX_TARGET, target_problem
from proxy.referrers_api import ReferrersApi
from proxy.registry_client import RegistryClient
from proxy.tags_api import TagListApi
from proxy.upstream import open_session, probe_native_referrers

log = logging.getLogger(__name__)

FORWARDER = web.AppKey("forwarder", Forwarder)
REFERRERS = web.AppKey("referrers", ReferrersApi)
TAGS = web.AppKey("tags", TagListApi)


@web.middleware
async def path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad names, digests and tags never reach the upstream (see paths.py)."""
    problem = target_problem(request.raw_path)
    if problem is not None:
        raise problem
    return await handler(request)


def make_app(
    settings: Settings,
    *,
    session: aiohttp.ClientSession | None = None,
    index: IndexStore | None = None,
) -> web.Application:
    """`session` and `index` let a caller share them; otherwise the app owns its own."""
    app = web.Application(
        middlewares=[error_middleware, path_middleware],
        handler_args={"max_field_size": 16384, "max_line_size": 4 * MAX_TARGET},
    )

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        own = session is None
        client = open_session(settings) if session is None else session
        app[FORWARDER] = Forwarder(client, settings.upstream)
        log.info("forwarding /v2/ to %s", settings.upstream)
        yield
        if own:
            await client.close()

    async def referrers_index(app: web.Application) -> AsyncIterator[None]:
        own = index is None
        store = open_index(settings) if index is None else index
        try:
            await store.ping()
        except IndexUnavailable as exc:
            log.error(
                "referrers index unreachable at start-up (%s): attaches answer 503 and reads come"
                " from the registry's tag-schema indexes until it is back",
                exc,
            )
        forwarder = app[FORWARDER]
        client = RegistryClient(forwarder.session, forwarder.upstream, settings.max_manifest_bytes)
        fallback = FallbackTags(client, store, settings.fallback_tags, settings.fallback_refresh)
        app[TAGS] = TagListApi(client, forwarder)
        app[REFERRERS] = ReferrersApi(
            forwarder,
            store,
            fallback,
            PullAccess(client, settings.auth_cache_seconds),
            max_manifest_bytes=settings.max_manifest_bytes,
            page_size=settings.referrers_page_size,
            upstream_native=await probe_native_referrers(forwarder.session, settings.upstream),
            body_timeout=settings.read_timeout,
        )
        yield
        if own:
            await store.close()

    app.cleanup_ctx.extend([upstream_session, referrers_index])

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    async def put_manifest(request: web.Request) -> web.StreamResponse:
        return await request.app[REFERRERS].put_manifest(request)

    async def delete_manifest(request: web.Request) -> web.StreamResponse:
        return await request.app[REFERRERS].delete_manifest(request)

    async def get_referrers(request: web.Request) -> web.StreamResponse:
        return await request.app[REFERRERS].get_referrers(request)

    async def tags_list(request: web.Request) -> web.StreamResponse:
        return await request.app[TAGS].tags_list(request)

    manifests = "/v2/{name:.+}/manifests/{reference}"
    app.router.add_route("PUT", manifests, put_manifest)
    app.router.add_route("DELETE", manifests, delete_manifest)
    app.router.add_get("/v2/{name:.+}/referrers/{digest}", get_referrers)
    if not settings.show_fallback_tags:
        app.router.add_get("/v2/{name:.+}/tags/list", tags_list)
    app.router.add_route("*", "/v2", forward)
    app.router.add_route("*", "/v2/{tail:.*}", forward)
    return app
