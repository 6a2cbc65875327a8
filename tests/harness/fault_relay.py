"""A relay in front of the real registry that answers chosen requests itself.

Distribution answers 429, 503 or a router 404 only under load, restarts or odd routes; the relay
makes those answers on demand for the requests a test names, and passes everything else to the
real registry byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


@dataclass(frozen=True)
class Canned:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Rule = tuple[Callable[[web.Request], bool], Canned]


@dataclass
class FaultRelay:
    target: str
    rules: list[Rule] = field(default_factory=list)
    delays: list[tuple[Callable[[web.Request], bool], float]] = field(default_factory=list)
    holds: list[tuple[Callable[[web.Request], bool], float]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def answer(self, matches: Callable[[web.Request], bool], canned: Canned) -> None:
        self.rules.append((matches, canned))

    def delay(self, matches: Callable[[web.Request], bool], seconds: float) -> None:
        """Pass matching requests on only after `seconds`, like a registry under load."""
        self.delays.append((matches, seconds))

    def hold(self, matches: Callable[[web.Request], bool], seconds: float) -> None:
        """Ask the registry at once but give its answer only after `seconds`: a reply that is
        stale by the time it arrives."""
        self.holds.append((matches, seconds))

    def clear(self) -> None:
        self.rules.clear()
        self.delays.clear()
        self.holds.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.raw_path}")
        for matches, canned in self.rules:
            if matches(request):
                return web.Response(status=canned.status, body=canned.body, headers=canned.headers)
        for matches, seconds in self.delays:
            if matches(request):
                await asyncio.sleep(seconds)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                f"{self.target}{request.raw_path}",
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream,
        ):
            data = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        for matches, seconds in self.holds:
            if matches(request):
                await asyncio.sleep(seconds)
        return web.Response(status=upstream.status, body=data, headers=kept)


@asynccontextmanager
async def running_relay(target: str) -> AsyncIterator[tuple[FaultRelay, str]]:
    relay = FaultRelay(target)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield relay, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
