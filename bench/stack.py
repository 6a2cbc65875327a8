"""The processes a run measures: one Docker Distribution 2.8 registry and one redis-server,
started once, and proxy processes started on demand, each configured as an operator would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.procfs import MiB
from proxy.devstack.processes import (
    ProxyProcess,
    Redis,
    Registry,
    running_proxy,
    running_redis,
    running_registry,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """Sizes and durations: the full run, or a CI smoke that only checks the machinery works."""

    rounds: int
    seconds: float  # each load-tool run
    warm_up: bool
    blob_bytes: int
    upload_bytes: int
    referrer_counts: tuple[int, int]  # the referrers-rate subjects
    page_counts: tuple[int, int]  # the per-page latency subjects
    attaches: int
    attach_concurrency: int
    reindex_repos: int
    reindex_referrers: int  # per repository
    large_referrers: int  # the long list an attach is timed against
    setup_concurrency: int = 50

    @classmethod
    def full(cls, rounds: int = 3) -> Plan:
        return cls(
            rounds=rounds,
            seconds=3.0,
            warm_up=True,
            blob_bytes=1024 * MiB,
            upload_bytes=256 * MiB,
            referrer_counts=(10, 1000),
            page_counts=(10, 10_000),
            attaches=100,
            attach_concurrency=50,
            reindex_repos=10,
            reindex_referrers=200,
            large_referrers=20_000,
        )

    @classmethod
    def quick(cls, rounds: int = 1) -> Plan:
        return cls(
            rounds=rounds,
            seconds=1.0,
            warm_up=False,
            blob_bytes=32 * MiB,
            upload_bytes=16 * MiB,
            referrer_counts=(10, 100),
            page_counts=(10, 250),
            attaches=20,
            attach_concurrency=10,
            reindex_repos=2,
            reindex_referrers=5,
            large_referrers=1_000,
        )


def size_label(size: int) -> str:
    return f"{size // (1024 * MiB)} GiB" if size >= 1024 * MiB else f"{size // MiB} MiB"


class Stack:
    def __init__(self, workdir: Path, exits: ExitStack, registry: Registry, redis: Redis) -> None:
        self.workdir = workdir
        self.registry = registry
        self.redis = redis
        self._exits = exits
        self._proxies: dict[str, ProxyProcess] = {}

    @classmethod
    @contextmanager
    def running(cls, workdir: Path) -> Iterator[Stack]:
        with ExitStack() as exits:
            registry = exits.enter_context(running_registry(workdir / "registry"))
            redis = exits.enter_context(running_redis(workdir / "redis"))
            yield cls(workdir, exits, registry, redis)

    def proxy(self, name: str, *args: str, upstream: str | None = None) -> ProxyProcess:
        """The proxy process called `name`, started with `args` the first time it is asked for,
        in front of the registry unless `upstream` names another."""
        if name not in self._proxies:
            self._proxies[name] = self._exits.enter_context(
                running_proxy(self.workdir / f"proxy-{name}", upstream or self.registry.url, *args)
            )
        return self._proxies[name]

    def enter(self, context: AbstractContextManager[T]) -> T:
        """Keep `context` (more processes) running until the stack stops."""
        return self._exits.enter_context(context)

    def redis_proxy(self, name: str, *args: str) -> ProxyProcess:
        return self.proxy(name, "--redis-url", self.redis_url(0), *args)

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{db}"

    def pids(self, proxy: ProxyProcess | None = None, *, redis: bool = False) -> dict[str, int]:
        """The processes whose CPU a measurement reports."""
        found = {"registry": self.registry.process.pid}
        if proxy is not None:
            found["proxy"] = proxy.process.pid
        if redis:
            found["redis"] = self.redis.process.pid
        return found
