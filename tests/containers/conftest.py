"""The images of deploy/ under a real Docker engine, driven by testcontainers.

An engine is found or started by deploy/local-images/engine.sh (DOCKER_HOST, the system socket,
or a private dockerd as root) and the images are built, or found up to date, by
deploy/local-images/build.sh: what `make image` runs. Without an engine or the tools to build
the images, every test here skips and says why. Containers use the host's network (the private
engine has no bridge) and listen on free loopback ports; Ryuk is off, since its image cannot be
pulled, so each fixture removes its own containers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from proxy.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "deploy" / "local-images" / "engine.sh"
BUILD = ROOT / "deploy" / "local-images" / "build.sh"
PROXY_IMAGE = "oci-referrers-proxy:dev"
REGISTRY_IMAGE = "oci-referrers-proxy-local/registry:2.8"
REDIS_IMAGE = "oci-referrers-proxy-local/redis:7"
BUILD_SECONDS = 900  # a cold build (Debian bases by mmdebstrap, wheelhouse, image): ~4 min seen
# The securityContext of deploy/kubernetes and the compose file, as `docker run` flags.
LOCKED_DOWN = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test here to run waits for the images, which on a fresh machine takes longer
    than the suite's limit per test; a test's own run keeps that limit's order."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.timeout(BUILD_SECONDS + 180))


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """DOCKER_HOST of an engine that answers; a private dockerd started here is stopped after."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client: install Debian's docker.io (make container-deps)")
    found = subprocess.run([ENGINE], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        pytest.skip(f"no Docker engine: {found.stderr.strip()}")
    host = found.stdout.strip()
    os.environ["DOCKER_HOST"] = host
    testcontainers_config.ryuk_disabled = True
    yield host
    if "started a private dockerd" in found.stderr:
        subprocess.run([ENGINE, "stop"], check=True, timeout=30)


@pytest.fixture(scope="session")
def images(docker_engine: str) -> None:
    """The proxy image from this tree and the local Debian-based images beside it."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("no mmdebstrap to build the base images: install it (make container-deps)")
    env = {**os.environ, "PIP": str(Path(sys.executable).with_name("pip"))}
    built = subprocess.run(
        [BUILD, PROXY_IMAGE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert built.returncode == 0, built.stdout + built.stderr


def answers(url: str) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_for(ready: Callable[[], bool], what: str, container: DockerContainer) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready():
            return
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "exited":
            break
        time.sleep(0.05)
    logs = container.get_wrapped_container().logs().decode(errors="replace")
    raise AssertionError(f"{what} not ready:\n{logs}")


@dataclass
class Stack:
    """Starts containers on the host network and removes every one of them at the end."""

    started: list[DockerContainer]

    def run(self, container: DockerContainer) -> DockerContainer:
        self.started.append(container)
        return container.start()

    def registry(self, **env: str) -> tuple[DockerContainer, str]:
        port = free_port()
        container = DockerContainer(REGISTRY_IMAGE)
        for name, value in {**env, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}"}.items():
            container.with_env(name, value)
        url = f"http://127.0.0.1:{port}"
        self.run(container.with_kwargs(network_mode="host"))
        wait_for(lambda: answers(f"{url}/v2/") == 200, "registry", container)
        return container, url

    def pod_registry(self, port: int) -> DockerContainer:
        """A registry in a network namespace of its own with only loopback, as in a pod; the
        proxy joins it with network_mode=container:<id>."""
        container = DockerContainer(REGISTRY_IMAGE).with_env(
            "REGISTRY_HTTP_ADDR", f"127.0.0.1:{port}"
        )
        return self.run(container.with_kwargs(network_mode="none"))

    def redis(self, *args: str) -> tuple[DockerContainer, str]:
        port = free_port()
        container = DockerContainer(REDIS_IMAGE).with_command(
            ["--bind", "127.0.0.1", "--port", str(port), "--save", "", *args]
        )
        self.run(container.with_kwargs(network_mode="host"))
        wait_for(
            lambda: container.exec(["redis-cli", "-p", str(port), "ping"]).output == b"PONG\n",
            "redis",
            container,
        )
        return container, f"redis://127.0.0.1:{port}/0"

    def proxy(
        self, upstream: str, *, network_mode: str = "host", port: int | None = None, **env: str
    ) -> tuple[DockerContainer, str]:
        """The image as shipped, locked down as the manifests run it; ready when it says so."""
        port = port or free_port()
        container = DockerContainer(PROXY_IMAGE).with_env("REFERRERS_PROXY_UPSTREAM", upstream)
        container.with_env("REFERRERS_PROXY_LISTEN", f"127.0.0.1:{port}")
        for name, value in env.items():
            container.with_env(f"REFERRERS_PROXY_{name.upper()}", value)
        self.run(container.with_kwargs(network_mode=network_mode, **LOCKED_DOWN))
        return container, f"http://127.0.0.1:{port}"


@pytest.fixture
def stack(images: None) -> Iterator[Stack]:
    stack = Stack([])
    yield stack
    for container in reversed(stack.started):
        container.stop()


@pytest.fixture(scope="session")
def shared(images: None) -> Iterator[Stack]:
    """Containers every test may share (each test uses its own repositories)."""
    stack = Stack([])
    yield stack
    for container in reversed(stack.started):
        container.stop()


@pytest.fixture(scope="session")
def registry(shared: Stack) -> str:
    return shared.registry()[1]


@pytest.fixture(scope="session")
def redis(shared: Stack) -> str:
    return shared.redis()[1]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
