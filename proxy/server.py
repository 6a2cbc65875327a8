"""Run the application until a signal stops it."""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from proxy.app import make_app
from proxy.config import Settings
from proxy.observability import AccessLogger

log = logging.getLogger(__name__)


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def serve(settings: Settings) -> None:
    log.info(
        "referrers-proxy listening on %s://%s:%d, index: %s",
        "https" if settings.tls_cert else "http",
        settings.listen_host,
        settings.listen_port,
        "redis" if settings.redis_url else "embedded",
    )
    web.run_app(
        make_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        print=None,
        ssl_context=_tls(settings),
        access_log_class=AccessLogger,
        shutdown_timeout=30.0,
    )
