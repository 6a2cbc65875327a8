"""The one client session to the upstream registry, built from the settings."""

from __future__ import annotations

import logging
import ssl

import aiohttp
from aiohttp import hdrs
from yarl import URL

from proxy.config import Settings
from proxy.oci.manifest import IMAGE_INDEX
from proxy.oci.targets import upstream_url
from proxy.upstream.native import describe_native, native_from_status

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


def open_session(
    settings: Settings,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
    *,
    pool_size: int | None = None,
) -> aiohttp.ClientSession:
    """Redirects are never followed and bodies never decoded: the client sees what the upstream
    said, byte for byte. The pool holds `pool_size` connections (default --max-connections);
    the app opens two sessions, so that blob transfers cannot take the connections that short
    requests and its own calls need."""
    pool_size = settings.max_connections if pool_size is None else pool_size
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=pool_size,
        ssl=_ssl_context(settings),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
        ),
        auto_decompress=False,
        read_bufsize=READ_BUFSIZE,
        skip_auto_headers=("User-Agent", hdrs.ACCEPT, "Accept-Encoding", hdrs.CONTENT_TYPE),
        cookie_jar=aiohttp.DummyCookieJar(),
        trace_configs=trace_configs,
    )


NATIVE_PROBE_PATH = "/v2/referrers-proxy-probe/referrers/sha256:" + "0" * 64


async def probe_native_referrers(session: aiohttp.ClientSession, upstream: URL) -> bool | None:
    """Whether the upstream answers the Referrers API itself (an OCI 1.1 registry).

    A 200 image index says yes and a 404 says no. A challenge (401/403), an error or silence
    says nothing: None, settled later by the first referrers request with real credentials.
    """
    try:
        async with session.get(
            upstream_url(upstream, NATIVE_PROBE_PATH),
            headers={hdrs.ACCEPT: IMAGE_INDEX},
            allow_redirects=False,
        ) as response:
            native = native_from_answer(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream %s unreachable at start-up: %r", upstream, exc)
        native = None
    log.info("upstream %s Referrers API: %s", upstream, describe_native(native))
    return native


def native_from_answer(response: aiohttp.ClientResponse) -> bool | None:
    return native_from_status(response.status, response.headers.get(hdrs.CONTENT_TYPE))
