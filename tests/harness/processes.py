"""Start real servers on free loopback ports, each with its own config and data dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = os.environ.get("DOCKER_REGISTRY_BIN", "/usr/bin/docker-registry")
REDIS_BIN = os.environ.get("REDIS_SERVER_BIN", "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after 20 s")


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _tcp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Registry:
    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


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


@dataclass(frozen=True)
class TokenAuth:
    """Distribution's `auth: token`: tokens signed by the key of `cert` are trusted."""

    realm: str
    service: str
    issuer: str
    cert: Path


def registry_config(
    port: int,
    data_dir: Path,
    htpasswd: Path | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
) -> str:
    auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n" if htpasswd else ""
    if token:
        auth = (
            f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.service}\n"
            f"    issuer: {token.issuer}\n    rootcertbundle: {token.cert}\n"
        )
    tls_block = f"  tls:\n    certificate: {tls.cert}\n    key: {tls.key}\n" if tls else ""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {data_dir}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n" + tls_block + auth
    )


@contextmanager
def running_registry(
    workdir: Path,
    *,
    port: int | None = None,
    htpasswd: Path | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
) -> Iterator[Registry]:
    """A Docker Distribution 2.8 registry (Debian's docker-registry) in `workdir`."""
    if not shutil.which(REGISTRY_BIN):
        raise RuntimeError(f"{REGISTRY_BIN} not found: install Debian's docker-registry")
    port = port or free_port()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(registry_config(port, data_dir, htpasswd, tls, token))
    log = (workdir / "registry.log").open("ab")
    process = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def ready() -> bool:
        return _tcp_open(port) if tls else _http_answers(f"{url}/v2/")

    try:
        wait_until(ready, f"registry on port {port}", process)
        yield Registry(url, port, data_dir, process)
    finally:
        _stop(process)
        log.close()


@dataclass(frozen=True)
class Redis:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def running_redis(workdir: Path, *, port: int | None = None) -> Iterator[Redis]:
    """A redis-server that keeps nothing on disk."""
    if not shutil.which(REDIS_BIN):
        raise RuntimeError(f"{REDIS_BIN} not found: install Debian's redis-server")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            REDIS_BIN,
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _tcp_answers(port), f"redis-server on port {port}", process)
        yield Redis(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        _stop(process)


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
        wait_until(lambda: _tcp_open(port), f"proxy on port {port}", process)
        yield ProxyProcess(url, process)
    finally:
        _stop(process)
        log.close()
