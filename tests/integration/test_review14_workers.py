"""Review of issue 16's --workers: a port already served by a foreign SO_REUSEPORT socket of the
same user. One process (no --workers) fails with EADDRINUSE; N workers bind beside it and the
kernel hands part of the proxy's connections to the stranger."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from proxy.devstack import free_port, stop
from proxy.devstack.processes import Redis, Registry


def _foreign_listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _serve(tmp_path: Path, registry: Registry, redis: Redis, port: int, *args: str):  # type: ignore[no-untyped-def]
    log = (tmp_path / f"proxy-{port}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--upstream",
            registry.url,
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            redis.url,
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_workers_refuse_a_port_a_foreign_socket_already_serves(
    registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    port = free_port()
    foreign = _foreign_listener(port)
    proxy = _serve(tmp_path, registry, redis_server, port, "--workers", "2")
    try:
        log = tmp_path / f"proxy-{port}.log"
        deadline = time.monotonic() + 30
        while log.read_text().count("listening on") < 2 and proxy.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        stolen = 0
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
            try:
                foreign.accept()[0].close()
                stolen += 1
            except BlockingIOError:
                pass
        # What a single process does (EADDRINUSE, exit) is what N workers should do too.
        assert proxy.poll() not in (None, 0), (
            f"the proxy serves beside a foreign socket; {stolen}/30 connections went to it"
        )
    finally:
        stop(proxy)
        foreign.close()
