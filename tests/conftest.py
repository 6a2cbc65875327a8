"""Real servers, started once per session; each test gets its own repository namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import make_app
from proxy.config import Settings, parse_upstream
from proxy.devstack.processes import Redis, Registry, free_port, running_redis, running_registry
from proxy.devstack.redis_ha import Cluster, running_cluster

AUTH_USER = "alice"
AUTH_PASSWORD = "wonderland"

StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        yield started


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of the test module's own, so its catalog holds only what those tests put
    there (for walks of the whole catalog: reindex, prune)."""
    with running_registry(tmp_path_factory.mktemp("own-registry")) as started:
        yield started


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that wants HTTP Basic credentials (htpasswd, bcrypt)."""
    workdir = tmp_path_factory.mktemp("auth-registry")
    hashed = bcrypt.hashpw(AUTH_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{AUTH_USER}:{hashed}\n")
    with running_registry(workdir, htpasswd=htpasswd) as started:
        yield started


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with running_redis(tmp_path_factory.mktemp("redis")) as started:
        yield started


RestartableRedis = Callable[[str], AbstractContextManager[Redis]]


@pytest.fixture
def restartable_redis(tmp_path: Path) -> RestartableRedis:
    """Starts a Redis on one port each time it is called (with a fresh data dir per name): a
    test stops it by leaving the block and "restarts" it, empty, at the same URL."""
    port = free_port()
    return lambda name: running_redis(tmp_path / name, port=port)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster (3 masters, 3 replicas) nobody kills: tests that fail nodes over start
    their own."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as started:
        yield started


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository of its own for each test: the shared registry needs no reset between tests."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    return f"t/{stem[:60].strip('-')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    """Start in-process proxies in front of an upstream URL; all are stopped after the test."""
    servers: list[TestServer] = []

    async def start(upstream: str, **overrides: Any) -> str:
        # Tag-schema writes behind an attach: scaled down from 1 s so tests wait less.
        overrides.setdefault("tag_write_delay", 0.05)
        settings = replace(Settings(upstream=parse_upstream(upstream)), **overrides)
        server = TestServer(make_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def proxy(start_proxy: StartProxy, registry: Registry) -> str:
    """Base URL of a proxy in front of the shared registry."""
    return await start_proxy(registry.url)
