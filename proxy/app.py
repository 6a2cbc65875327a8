"""The aiohttp application: routes, shared state, and the resources it opens and closes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.config import Settings
from proxy.errors import error_middleware
from proxy.forward import Forwarder
from proxy.upstream import open_session

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
FORWARDER = web.AppKey("forwarder", Forwarder)


def make_app(
    settings: Settings, *, session: aiohttp.ClientSession | None = None
) -> web.Application:
    """`session` lets a caller share one client session; otherwise the app owns its own."""
    app = web.Application(middlewares=[error_middleware], handler_args={"max_field_size": 16384})
    app[SETTINGS] = settings

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        own = session is None
        client = open_session(settings) if session is None else session
        app[FORWARDER] = Forwarder(client, settings.upstream)
        log.info("forwarding /v2/ to %s", settings.upstream)
        yield
        if own:
            await client.close()

    app.cleanup_ctx.append(upstream_session)

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    app.router.add_route("*", "/v2", forward)
    app.router.add_route("*", "/v2/{tail:.*}", forward)
    return app
