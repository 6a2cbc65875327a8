"""Run the application until SIGTERM or SIGINT, then drain.

aiohttp's own graceful shutdown marks every connection closing, after which it drops the bytes
still arriving, so an upload in flight at SIGTERM would be cut. Here a signal first stops the
listener, then requests in flight get up to `shutdown_grace` seconds to finish, and only then
are connections closed and resources released.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import signal
import ssl

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.app import METRICS, make_app
from proxy.config import MiB, Settings
from proxy.http.access_log import AccessLogger

log = logging.getLogger(__name__)


class InFlight:
    """Counts the requests being handled, so shutdown can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_buffers_on_heap() -> None:
    """Let glibc serve the multi-MiB read buffers of a blob relay from the heap: above its mmap
    threshold each read would map and unmap fresh pages (strace: an mmap/mremap/munmap per
    recv), which undoes the gain of large reads. Freed memory up to 32 MiB is kept for reuse.
    Other C libraries are left alone."""
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, 8 * MiB)
        libc.mallopt(_M_TRIM_THRESHOLD, 32 * MiB)
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; large reads use the allocator's defaults")


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def run(settings: Settings, worker: int | None = None) -> None:
    """Serve until a signal; `worker` (1..N, with --workers) shares the port with the others."""
    keep_large_buffers_on_heap()
    in_flight = InFlight()
    app = make_app(settings)
    app.middlewares.insert(0, in_flight.middleware)
    if worker is not None:
        app[METRICS].identify_worker(worker)
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.listen_host,
            settings.listen_port,
            ssl_context=_tls(settings),
            reuse_port=worker is not None,
        )
        await site.start()
        log.info(
            "referrers-proxy %slistening on %s://%s:%d, index: %s",
            "" if worker is None else f"worker {worker}/{settings.workers} ",
            "https" if settings.tls_cert else "http",
            settings.listen_host,
            settings.listen_port,
            "redis" if settings.uses_redis else "embedded",
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        await site.stop()
        log.info(
            "stopping: no new connections; %d requests in flight get up to %.0f s",
            in_flight.count,
            settings.shutdown_grace,
        )
        try:
            async with asyncio.timeout(settings.shutdown_grace):
                await in_flight.drained()
        except TimeoutError:
            log.warning("grace period over: cutting %d requests", in_flight.count)
    finally:
        await runner.cleanup()
    log.info("stopped")


def serve(settings: Settings) -> None:
    asyncio.run(run(settings))
