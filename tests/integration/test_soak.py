"""The short variant of `make soak`: no 5xx, no lost or resurrected referrer, no growth."""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak
from proxy.devstack.processes import Redis, Registry, running_proxy

MiB = 1024 * 1024


async def test_short_soak(registry: Registry, redis_server: Redis, tmp_path: Path) -> None:
    with running_proxy(tmp_path, registry.url, "--redis-url", redis_server.url) as proxy:
        result = await soak(
            proxy.url,
            registry.url,
            proxy.process.pid,
            seconds=8.0,
            connections=60,
            repos=4,
            keep=8,
        )
    assert result.requests > 500
    assert result.server_errors == 0, result.table()
    assert result.attached > 50
    assert result.detached > 20, "detaches racing attaches on one subject are part of the mix"
    assert (result.lost_in_answer, result.lost_in_registry) == (0, 0), result.table()
    assert result.resurrected == 0, result.table()
    _, (_, rss_middle, fds_middle), (_, rss_end, fds_end) = result.steady_samples()
    assert rss_end - rss_middle < 24 * MiB, result.table()
    assert fds_end - fds_middle <= 16, result.table()
