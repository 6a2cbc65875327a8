"""Pure header rules for the pass-through: what crosses the proxy, and how URLs are rewritten."""

from __future__ import annotations

import re

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones seen in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Not hop-by-hop, but the proxy's own connection to the upstream decides them.
_REQUEST_DROPPED = frozenset({"host", "expect"})
_LINK_TARGET = re.compile(r"<([^>]*)>")

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_listed(headers: Headers) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", []):
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed


def _end_to_end(headers: Headers, dropped: frozenset[str]) -> CIMultiDict[str]:
    skip = HOP_BY_HOP | dropped | _connection_listed(headers)
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in skip)


def upstream_request_headers(
    incoming: Headers, *, client_ip: str | None, scheme: str, host: str
) -> CIMultiDict[str]:
    """Headers for the upstream: end-to-end ones untouched (Authorization included), plus
    X-Forwarded-* so the upstream can build URLs that point back at the proxy."""
    headers = _end_to_end(incoming, _REQUEST_DROPPED)
    if client_ip:
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    headers["X-Forwarded-Proto"] = scheme
    headers["X-Forwarded-Host"] = host
    return headers


def rewrite_url(value: str, upstream: URL, public: URL) -> str:
    """An absolute URL on the upstream's origin is moved to the proxy's; any other is kept,
    so redirects to blob storage reach the client untouched."""
    try:
        url = URL(value, encoded=True)
    except ValueError:
        return value
    if not url.is_absolute() or url.origin() != upstream:
        return value
    moved = URL.build(
        scheme=public.scheme,
        authority=public.raw_authority,
        path=url.raw_path,
        query_string=url.raw_query_string,
        encoded=True,
    )
    return str(moved)


def rewrite_link(value: str, upstream: URL, public: URL) -> str:
    return _LINK_TARGET.sub(lambda m: f"<{rewrite_url(m.group(1), upstream, public)}>", value)


def client_response_headers(
    upstream_headers: Headers, *, upstream: URL, public: URL
) -> CIMultiDict[str]:
    headers = _end_to_end(upstream_headers, frozenset())
    if hdrs.LOCATION in headers:
        headers[hdrs.LOCATION] = rewrite_url(headers[hdrs.LOCATION], upstream, public)
    if hdrs.LINK in headers:
        links = [rewrite_link(link, upstream, public) for link in headers.getall(hdrs.LINK)]
        del headers[hdrs.LINK]
        for link in links:
            headers.add(hdrs.LINK, link)
    return headers
