"""The one client session to the upstream registry, built from the settings."""

from __future__ import annotations

import logging
import ssl

import aiohttp

from proxy.config import Settings

log = logging.getLogger(__name__)

# Larger reads were the biggest lever on blob throughput (64 KiB -> 1 MiB roughly doubled it).
READ_BUFSIZE = 1024 * 1024


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.upstream.scheme != "https":
        return True
    if settings.upstream_insecure:
        log.warning(
            "TLS verification of upstream %s is DISABLED (--upstream-insecure)", settings.upstream
        )
        return False
    return ssl.create_default_context(cafile=settings.upstream_ca_file)


def open_session(settings: Settings) -> aiohttp.ClientSession:
    """Redirects are never followed and bodies never decoded: the client sees what the upstream
    said, byte for byte."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=settings.max_connections,
        ssl=_ssl_context(settings),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
        ),
        auto_decompress=False,
        read_bufsize=READ_BUFSIZE,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
