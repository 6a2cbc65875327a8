"""Streaming pass-through to the upstream: bodies move in bounded chunks, never whole."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.errors import StreamAborted
from proxy.headers import client_response_headers, upstream_request_headers

log = logging.getLogger(__name__)

_NO_BODY_STATUSES = frozenset({204, 304})


class Forwarder:
    def __init__(self, session: aiohttp.ClientSession, upstream: URL) -> None:
        self.session = session
        self.upstream = upstream

    @asynccontextmanager
    async def open(
        self, request: web.Request, body: bytes | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send `request` upstream; with no `body` given, its own body streams through."""
        data: bytes | aiohttp.StreamReader | None = body
        if data is None and request.body_exists:
            data = request.content
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, scheme=request.scheme, host=request.host
        )
        async with self.session.request(
            request.method,
            URL(f"{self.upstream}{request.raw_path}", encoded=True),
            headers=headers,
            data=data,
            allow_redirects=False,
        ) as response:
            yield response

    async def relay(
        self,
        request: web.Request,
        upstream_response: aiohttp.ClientResponse,
        extra_headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        headers = client_response_headers(
            upstream_response.headers, upstream=self.upstream, public=request.url.origin()
        )
        if extra_headers:
            headers.update(extra_headers)
        response = web.StreamResponse(
            status=upstream_response.status, reason=upstream_response.reason, headers=headers
        )
        await response.prepare(request)
        if request.method != "HEAD" and upstream_response.status not in _NO_BODY_STATUSES:
            try:
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "%s %s: upstream failed mid-body, closing the client connection: %r",
                    request.method,
                    request.path,
                    exc,
                )
                raise StreamAborted(request.path) from exc
        await response.write_eof()
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with self.open(request) as upstream_response:
            return await self.relay(request, upstream_response)
