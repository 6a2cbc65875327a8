"""The short variant of `make soak`: no 5xx, no lost or resurrected referrer, no growth.

The proxy's pools warm up for as long as the run's peak concurrency grows, so growth is judged
on what no live connection explains, and the connections on the pools' bounds (set small here,
so that they are reached)."""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak
from proxy.devstack.processes import Redis, Registry, running_proxy

MiB = 1024 * 1024


CLIENTS = 60
POOLS = {"--max-connections": 64, "--control-connections": 32, "--redis-max-connections": 32}


async def test_short_soak(registry: Registry, redis_server: Redis, tmp_path: Path) -> None:
    pools = [str(part) for flag_value in POOLS.items() for part in flag_value]
    with running_proxy(tmp_path, registry.url, "--redis-url", redis_server.url, *pools) as proxy:
        result = await soak(
            proxy.url,
            registry.url,
            proxy.process.pid,
            seconds=8.0,
            connections=CLIENTS,
            repos=4,
            keep=8,
        )
    assert result.requests > 500
    assert result.server_errors == 0, result.table()
    assert result.attached > 50
    assert result.detached > 20, "detaches racing attaches on one subject are part of the mix"
    assert (result.lost_in_answer, result.lost_in_registry) == (0, 0), result.table()
    assert result.resurrected == 0, result.table()
    _, middle, end = result.steady_samples()
    assert end.rss - middle.rss < 24 * MiB, result.table()
    assert end.loose_fds - middle.loose_fds <= 4, result.table()
    assert end.connected <= CLIENTS + sum(POOLS.values()), "the pools keep their bounds"
    # Warm by the middle (measured: 148→148, 151→154, 156→159 with CI running alongside): a
    # connection leaked by one request in a hundred adds ~15 by the end, below the bound.
    assert end.connected - middle.connected <= 12, result.table()
