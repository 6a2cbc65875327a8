"""Start real servers on free loopback ports, each with its own config and data dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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


def registry_config(port: int, data_dir: Path, htpasswd: Path | None = None) -> str:
    auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n" if htpasswd else ""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {data_dir}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n" + auth
    )


@contextmanager
def running_registry(
    workdir: Path, *, port: int | None = None, htpasswd: Path | None = None
) -> Iterator[Registry]:
    """A Docker Distribution 2.8 registry (Debian's docker-registry) in `workdir`."""
    if not shutil.which(REGISTRY_BIN):
        raise RuntimeError(f"{REGISTRY_BIN} not found: install Debian's docker-registry")
    port = port or free_port()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(registry_config(port, data_dir, htpasswd))
    log = (workdir / "registry.log").open("ab")
    process = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _http_answers(f"{url}/v2/"), f"registry on port {port}", process)
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
