"""Run the application until a signal stops it."""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.app import make_app
from proxy.config import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    log.info(
        "referrers-proxy listening on %s:%d, index: %s",
        settings.listen_host,
        settings.listen_port,
        "redis" if settings.redis_url else "embedded",
    )
    web.run_app(
        make_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        print=None,
        shutdown_timeout=30.0,
    )
