"""Start real servers on free loopback ports, each with its own config and data dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.devstack import (
    REGISTRY_BIN,
    Notify,
    Registry,
    TLSFiles,
    TokenAuth,
    free_port,
    running_registry,
    stop,
    tcp_open,
    wait_until,
)

__all__ = [
    "REGISTRY_BIN",
    "Notify",
    "ProxyProcess",
    "Redis",
    "Registry",
    "TLSFiles",
    "TokenAuth",
    "free_port",
    "make_tls_files",
    "running_proxy",
    "running_redis",
    "running_registry",
    "start_redis",
]

REDIS_BIN = os.environ.get("REDIS_SERVER_BIN", "redis-server")


def make_tls_files(workdir: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (openssl CLI)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, ca_key = workdir / "ca.pem", workdir / "ca.key"
    cert, key, csr = workdir / "server.pem", workdir / "server.key", workdir / "server.csr"
    san = workdir / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            san,
        ],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return TLSFiles(ca, cert, key)


def _tcp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class Redis:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def start_redis(
    workdir: Path, port: int, *extra: str, config: Path | None = None
) -> subprocess.Popen[bytes]:
    """A redis-server that keeps nothing on disk, answering PING on `port` when this returns.
    `extra` comes last, so it can override; `config` (a Sentinel's, which must be a writable
    file) comes first."""
    if not shutil.which(REDIS_BIN):
        raise RuntimeError(f"{REDIS_BIN} not found: install Debian's redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            REDIS_BIN,
            *([str(config)] if config is not None else []),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _tcp_answers(port), f"redis-server on port {port}", process)
    except RuntimeError:
        stop(process)
        raise
    return process


@contextmanager
def running_redis(workdir: Path, *, port: int | None = None) -> Iterator[Redis]:
    """A redis-server that keeps nothing on disk."""
    port = port or free_port()
    process = start_redis(workdir, port)
    try:
        yield Redis(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        stop(process)


@dataclass(frozen=True)
class ProxyProcess:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_proxy(workdir: Path, upstream: str, *args: str) -> Iterator[ProxyProcess]:
    """`python -m proxy serve` as operators run it, in its own process."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (workdir / f"proxy-{port}.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--upstream",
            upstream,
            "--listen",
            f"127.0.0.1:{port}",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # It binds only once start-up is done, so an open port means ready (HTTP or HTTPS).
        wait_until(lambda: tcp_open(port), f"proxy on port {port}", process)
        yield ProxyProcess(url, process)
    finally:
        stop(process)
        log.close()
