"""`python -m bench.slow_relay TARGET PORT DELAY`: a loopback relay that waits DELAY seconds
before passing each request to TARGET, so a local registry answers like a remote one (~20 ms
away). Bodies are read whole: it carries manifests, not blobs (a HEAD's answer
carries Content-Length: 0)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.devstack import free_port, stop, tcp_open, wait_until

# Recomputed or per-connection: the relay's own framing replaces them.
_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


def make_relay(target: str, delay: float) -> web.Application:
    app = web.Application()
    client = web.AppKey("client", aiohttp.ClientSession)

    async def open_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app[client] = session
            yield

    async def relay(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        async with app[client].request(
            request.method,
            target + request.raw_path,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as answer:
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
            return web.Response(status=answer.status, headers=kept, body=await answer.read())

    app.cleanup_ctx.append(open_client)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


@dataclass(frozen=True)
class Relay:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_relay(target: str, delay: float, log: Path) -> Iterator[Relay]:
    """The relay in its own process, so its CPU is neither the bench's nor the proxy's."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.slow_relay", target, str(port), str(delay)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: tcp_open(port), f"relay on port {port}", process)
            yield Relay(f"http://127.0.0.1:{port}", process)
        finally:
            stop(process)


def main() -> None:
    target, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    web.run_app(make_relay(target.rstrip("/"), delay), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
