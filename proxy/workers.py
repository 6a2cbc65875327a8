"""`--workers N`: N processes serving one port, for more than one core.

A pass-through request costs the proxy CPU in its one event loop, so one process uses at most
one core. Each worker binds the listening port with SO_REUSEPORT (the kernel spreads new
connections over them) and has its own upstream pools, Redis pool, permission grants and memory
manifest cache; only what lives in Redis is shared, which is why more than one worker needs the
Redis index (config.check_workers).

The parent serves nothing: it starts the workers as fresh interpreters (spawn: no event loop or
connection inherited), forwards SIGTERM/SIGINT so each drains as a single process would, and if
a worker exits on its own it stops the others and exits 1, for the orchestrator to restart the
whole: a proxy quietly serving at 1/N of its capacity would hide the fault.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

from proxy.config import Settings
from proxy.logs import configure_logging
from proxy.server import run

log = logging.getLogger(__name__)

STOP_MARGIN = 10.0  # seconds past --shutdown-grace before a worker still running is killed
_PR_SET_PDEATHSIG = 1


def supervise(settings: Settings) -> int:
    """Run `settings.workers` workers until a signal (exit 0) or a worker's own exit (1); 2 when
    the port is already served."""
    taken = _port_taken(settings.listen_host, settings.listen_port)
    if taken is not None:
        log.error("cannot listen on %s:%d: %s", settings.listen_host, settings.listen_port, taken)
        return 2
    return asyncio.run(_supervise(settings))


def _port_taken(host: str | None, port: int) -> str | None:
    """Why the port cannot be ours alone, or None. SO_REUSEPORT would let the workers bind
    beside a socket someone else already listens on (same user, same option), and the kernel
    would hand that stranger a share of the connections: a bind without it must succeed first."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc.strerror or str(exc)
    return None


async def _supervise(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_work,
            args=(settings, n, os.getpid()),
            name=f"referrers-proxy worker {n}",
        )
        for n in range(1, settings.workers + 1)
    ]
    exited: list[BaseProcess] = []
    ended = asyncio.Event()

    def on_exit(worker: BaseProcess) -> None:
        exited.append(worker)
        ended.set()

    for worker in workers:
        worker.start()
        loop.add_reader(worker.sentinel, on_exit, worker)
    log.info(
        "supervising %d workers on port %d (pids %s)",
        len(workers),
        settings.listen_port,
        ", ".join(str(worker.pid) for worker in workers),
    )
    waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(ended.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    for worker in workers:
        loop.remove_reader(worker.sentinel)
    failed = not stopping.is_set()
    log.info("stopping %d workers", len(workers))
    await asyncio.to_thread(_stop, workers, settings.shutdown_grace + STOP_MARGIN)
    if failed:
        # Its sentinel closes a moment before its exit code can be read: read it once joined.
        for dead in exited:
            log.error(
                "%s (pid %d) exited with code %s: stopped the others",
                dead.name,
                dead.pid,
                dead.exitcode,
            )
    log.info("all workers stopped")
    return 1 if failed else 0


def _stop(workers: Sequence[BaseProcess], timeout: float) -> None:
    """SIGTERM each worker still running (it drains), then SIGKILL whichever outlives `timeout`."""
    for worker in workers:
        if worker.exitcode is None:
            worker.terminate()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.exitcode is None:
            log.warning("%s (pid %d) still running: killing it", worker.name, worker.pid)
            worker.kill()
            worker.join()


def _work(settings: Settings, worker: int, parent: int) -> None:
    """A worker's whole life, in its own interpreter."""
    _stop_with_parent(parent)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run(settings, worker))


def _stop_with_parent(parent: int) -> None:
    """Ask Linux for a SIGTERM (a drain) when the parent dies, so a killed supervisor leaves no
    worker holding the port; elsewhere the workers outlive it."""
    name = ctypes.util.find_library("c")
    if name is not None and "libc.so" in name:
        ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit("the supervisor exited before this worker started")
