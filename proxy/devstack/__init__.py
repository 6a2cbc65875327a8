"""A throwaway Docker Distribution registry started as a child process: what `make run` fronts
when no UPSTREAM is given, and what the tests and benchmarks run the proxy against.

It lives in the package, not in tests/, so that the product's own command runs no test code;
its modules (processes, the nginx front, Redis HA, an OCI push client) serve the tests and the
benchmarks alike. `python -m proxy.devstack` starts a registry on 127.0.0.1:5000 and serves the
proxy in front of it.
"""

from __future__ import annotations

import logging
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
REGISTRY_PORT = 5000
log = logging.getLogger("devstack")


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


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
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


@dataclass(frozen=True)
class TokenAuth:
    """Distribution's `auth: token`: tokens signed by the key of `cert` are trusted."""

    realm: str
    service: str
    issuer: str
    cert: Path


@dataclass(frozen=True)
class Notify:
    """Distribution's `notifications` endpoint: where it sends push and delete events."""

    url: str
    token: str
    backoff: str = "200ms"  # retried this long after a failed delivery (default 1s)


def notifications_config(notify: Notify) -> str:
    return (
        "notifications:\n  endpoints:\n"
        f"    - name: referrers-proxy\n      url: {notify.url}\n"
        f"      headers:\n        Authorization: [Bearer {notify.token}]\n"
        f"      timeout: 2s\n      threshold: 5\n      backoff: {notify.backoff}\n"
    )


def registry_config(
    port: int,
    data_dir: Path,
    htpasswd: Path | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
    notify: Notify | None = None,
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
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n"
        + tls_block
        + auth
        + (notifications_config(notify) if notify else "")
    )


@contextmanager
def running_registry(
    workdir: Path,
    *,
    port: int | None = None,
    htpasswd: Path | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
    notify: Notify | None = None,
) -> Iterator[Registry]:
    """A Docker Distribution 2.8 registry (Debian's docker-registry) in `workdir`."""
    if not shutil.which(REGISTRY_BIN):
        raise RuntimeError(f"{REGISTRY_BIN} not found: install Debian's docker-registry")
    port = port or free_port()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(registry_config(port, data_dir, htpasswd, tls, token, notify))
    registry_log = (workdir / "registry.log").open("ab")
    process = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)], stdout=registry_log, stderr=subprocess.STDOUT
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def ready() -> bool:
        return tcp_open(port) if tls else http_answers(f"{url}/v2/")

    try:
        wait_until(ready, f"registry on port {port}", process)
        yield Registry(url, port, data_dir, process)
    finally:
        stop(process)
        registry_log.close()
