"""Streaming pass-through to the upstream: bodies move in bounded chunks, never whole."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from proxy.config import MiB
from proxy.http.headers import client_response_headers, upstream_request_headers
from proxy.http.transfers import ClientTransfers, PacedBody, client_keys, is_transfer
from proxy.metrics import FROM_UPSTREAM, TO_UPSTREAM, Metrics
from proxy.oci.errors import OCIError, StreamAborted, fault
from proxy.oci.targets import upstream_url
from proxy.upstream.client import Answer, read_capped

log = logging.getLogger(__name__)

_NO_BODY_STATUSES = frozenset({204, 304})
LARGE_BODY = 4 * MiB
LARGE_READ = 4 * MiB


@contextmanager
def large_reads(response: aiohttp.ClientResponse) -> Iterator[None]:
    """While a large body streams, read its connection 4 MiB at a time instead of asyncio's
    256 KiB: the per-read trip through Python is what limits a blob relay (bench: 1 GiB GET
    ~0.42 -> ~0.55 of direct, with `keep_large_buffers_on_heap`). `max_size` is an attribute of
    asyncio's selector transports; any other transport keeps its own reads."""
    transport = response.connection.transport if response.connection else None
    default = getattr(transport, "max_size", None)
    if not isinstance(default, int) or (response.content_length or 0) < LARGE_BODY:
        yield
        return
    transport.max_size = LARGE_READ  # type: ignore[union-attr]
    try:
        yield
    finally:
        transport.max_size = default  # type: ignore[union-attr]


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: URL,
        metrics: Metrics,
        *,
        transfer_session: aiohttp.ClientSession | None = None,
        min_body_rate: float = 0.0,
        body_rate_window: float = 10.0,
        clients: ClientTransfers | None = None,
    ) -> None:
        """`session` serves short requests and the proxy's own calls, `transfer_session` (by
        default the same) blob downloads and uploads: see transfers.py. A `min_body_rate` of
        0 and no `clients` mean no limits."""
        self.session = session
        self.transfer_session = transfer_session or session
        self.upstream = upstream
        self.metrics = metrics
        self.min_body_rate = min_body_rate
        self.body_rate_window = body_rate_window
        self.clients = clients or ClientTransfers(0)

    @asynccontextmanager
    async def open(
        self, request: web.Request, body: bytes | None = None, target: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send `request` upstream (to `target` instead of its own path when the proxy chose
        one); with no `body` given, its own body streams through, and is cut with 408 when it
        arrives below the minimum rate. A transfer counts against its client's limit and takes
        its connection from the transfer pool."""
        paced: PacedBody | None = None
        data: bytes | AsyncIterator[bytes] | aiohttp.StreamReader | None = body
        if data is None and request.body_exists:
            if self.min_body_rate:
                paced = PacedBody(request.content, self.min_body_rate, self.body_rate_window)
                data = paced.chunks()
            else:
                data = request.content
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, scheme=request.scheme, host=request.host
        )
        transfer = is_transfer(request.method, request.path)
        session = self.transfer_session if transfer else self.session
        held = self._admit(request) if transfer else ()
        try:
            async with session.request(
                request.method,
                upstream_url(self.upstream, target or request.raw_path),
                headers=headers,
                data=data,
                allow_redirects=False,
            ) as response:
                yield response
        except aiohttp.ClientError as exc:
            if paced is None or not paced.too_slow:
                raise
            self.metrics.transfer_refused("too_slow")
            raise OCIError(408, "UNSUPPORTED", "request body arrived too slowly") from exc
        finally:
            self.clients.release(held)
            if data is not None:
                sent = len(body) if body is not None else request.content.total_bytes
                self.metrics.streamed(request.path, TO_UPSTREAM, sent)

    def _admit(self, request: web.Request) -> tuple[str, ...]:
        """The client keys a transfer holds until it ends; 429 when one is at its limit."""
        keys = client_keys(request.remote, request.headers.get(hdrs.AUTHORIZATION))
        if not self.clients.admit(keys):
            self.metrics.transfer_refused("client_limit")
            raise OCIError(
                429,
                "TOOMANYREQUESTS",
                "too many transfers in flight for this client",
                headers={hdrs.RETRY_AFTER: "1"},
            )
        return keys

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
            relayed = 0
            try:
                with large_reads(upstream_response):
                    async for chunk in upstream_response.content.iter_any():
                        relayed += len(chunk)
                        await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "%s %s: upstream failed mid-body, closing the client connection: %s",
                    request.method,
                    request.path,
                    fault(exc),
                )
                raise StreamAborted(request.path) from exc
            finally:
                self.metrics.streamed(request.path, FROM_UPSTREAM, relayed)
        await response.write_eof()
        return response

    async def exchange(
        self, request: web.Request, cap: int, body: bytes | None = None, target: str | None = None
    ) -> Answer:
        """Send `request` upstream and read its whole answer, releasing the connection before
        the proxy acts on it (index and tag writes make upstream calls of their own)."""
        async with self.open(request, body, target) as upstream:
            data = await read_capped(
                upstream.content,
                upstream.content_length,
                cap,
                "the answer",
            )
            self.metrics.streamed(request.path, FROM_UPSTREAM, len(data))
            return Answer(upstream.status, upstream.headers, data)

    def reply(
        self,
        request: web.Request,
        answer: Answer,
        extra_headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """The client's copy of an upstream answer the proxy has read whole."""
        headers = client_response_headers(
            answer.headers, upstream=self.upstream, public=request.url.origin()
        )
        headers.popall(hdrs.CONTENT_LENGTH, None)
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with self.open(request) as upstream_response:
            return await self.relay(request, upstream_response)
