"""`--workers 2` as operators run it: one supervisor, two worker processes on one port, a real
registry and a real Redis. Which worker answered is read from its own /metrics page."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from proxy.devstack import free_port, stop
from proxy.devstack.oci_client import (
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import ProxyProcess, Redis, Registry, running_proxy

WORKER_INFO = re.compile(rb'^referrers_proxy_worker_info\{pid="(\d+)",worker="(\d+)"\} 1\.0$', re.M)
REFERRERS_SERVED = re.compile(
    rb'^referrers_proxy_requests_total\{method="GET",route="referrers",status="200"\} (\S+)$', re.M
)


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A new connection per request: the kernel picks a worker per connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@contextmanager
def two_workers(tmp_path: Path, registry: Registry, redis: Redis) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path, registry.url, "--workers", "2", "--redis-url", redis.url) as proxy:
        yield proxy


async def pages_by_worker(
    fresh: aiohttp.ClientSession, base: str, within: float = 30.0
) -> dict[int, bytes]:
    """A /metrics page of each of the two workers, by pid: the second may still be starting."""
    pages: dict[int, bytes] = {}
    deadline = time.monotonic() + within
    while len(pages) < 2:
        assert time.monotonic() < deadline, f"only pids {sorted(pages)} answered"
        try:
            async with fresh.get(f"{base}/metrics") as response:
                body = await response.read()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
            continue
        match = WORKER_INFO.search(body)
        assert match is not None, body[:500]
        pages[int(match[1])] = body
    return pages


def parent_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it serves nothing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text[text.rindex(")") + 2] in "ZX"


async def until_gone(pids: list[int], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if not gone(pid)]
        await asyncio.sleep(0.05)


def log_of(tmp_path: Path, proxy: ProxyProcess) -> str:
    return (tmp_path / f"proxy-{proxy.url.rsplit(':', 1)[1]}.log").read_text()


async def test_two_workers_serve_one_port_and_share_the_index(
    fresh: aiohttp.ClientSession, registry: Registry, redis_server: Redis, repo: str, tmp_path: Path
) -> None:
    with two_workers(tmp_path, registry, redis_server) as proxy:
        pids = sorted(await pages_by_worker(fresh, proxy.url))
        assert [parent_of(pid) for pid in pids] == [proxy.process.pid] * 2
        image = await push_subject_image(fresh, proxy.url, repo)
        referrer = artifact_manifest(image)
        assert (await push_manifest(fresh, proxy.url, repo, referrer)).status == 201
        for _ in range(20):
            assert await listed_referrers(fresh, proxy.url, repo, image) == [sha256(referrer)]
        pages = await pages_by_worker(fresh, proxy.url)
    assert sorted(pages) == pids
    for pid, page in pages.items():
        served = REFERRERS_SERVED.search(page)
        assert served is not None, f"worker {pid} listed no referrers"
        assert float(served[1]) > 0


async def test_sigterm_drains_every_worker_and_exits_0(
    fresh: aiohttp.ClientSession, registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    with two_workers(tmp_path, registry, redis_server) as proxy:
        pids = sorted(await pages_by_worker(fresh, proxy.url))
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.process.wait, 60) == 0
        assert all(gone(pid) for pid in pids)
        log = log_of(tmp_path, proxy)
    assert log.count("stopping: no new connections") == 2, log
    assert "all workers stopped" in log


async def test_a_worker_that_dies_stops_the_other_and_the_proxy_exits_1(
    fresh: aiohttp.ClientSession, registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    with two_workers(tmp_path, registry, redis_server) as proxy:
        killed, other = sorted(await pages_by_worker(fresh, proxy.url))
        os.kill(killed, signal.SIGKILL)
        assert await asyncio.to_thread(proxy.process.wait, 60) == 1
        assert gone(other)
        log = log_of(tmp_path, proxy)
    assert f"(pid {killed}) exited with code -9: stopped the others" in log, log


async def test_workers_stop_when_the_supervisor_is_killed(
    fresh: aiohttp.ClientSession, registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    with two_workers(tmp_path, registry, redis_server) as proxy:
        pids = sorted(await pages_by_worker(fresh, proxy.url))
        proxy.process.kill()
        await until_gone(pids)


def test_workers_refuse_a_port_a_foreign_socket_already_serves(
    registry: Registry, redis_server: Redis, tmp_path: Path
) -> None:
    port = free_port()
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", port))
        foreign.listen(64)
        with (tmp_path / "proxy.log").open("wb") as log:
            proxy = subprocess.Popen(
                [
                    *(sys.executable, "-m", "proxy", "serve", "--upstream", registry.url),
                    *("--listen", f"127.0.0.1:{port}", "--redis-url", redis_server.url),
                    *("--workers", "2"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                code = proxy.wait(timeout=30)
            finally:
                stop(proxy)
    said = (tmp_path / "proxy.log").read_text()
    assert code == 2, said
    assert f"cannot listen on 127.0.0.1:{port}" in said
    assert "listening on" not in said, "no worker was started"
