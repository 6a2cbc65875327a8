"""Referrers GET on a Redis Cluster (3 masters, 3 replicas) against the single Redis, same run,
interleaved rounds: what the cluster client costs a read.

Placement: nothing is pinned. The registry, both proxies, the single redis-server, the six
cluster nodes and the load generator share the machine's cores as the kernel schedules them;
the CPU shares of the measured proxy and of the Redis side are reported with each row (the
cluster's are the sum over its six nodes)."""

from __future__ import annotations

from bench.content import attach, referrer_pages, session
from bench.load import request_rate
from bench.procfs import CpuMeter
from bench.report import Row, Target
from bench.stack import Plan, Stack
from bench.stats import Samples, medians
from proxy.devstack.oci_client import push_subject_image, sha256
from proxy.devstack.redis_ha import running_cluster

SCENARIO = "redis-ha"
CONNECTIONS = 8
REFERRERS = 10


async def run(stack: Stack, plan: Plan) -> list[Row]:
    cluster = stack.enter(running_cluster(stack.workdir / "cluster"))
    proxies = {
        "single": stack.redis_proxy("ha-single"),
        "cluster": stack.proxy("ha-cluster", "--redis-url", cluster.seed_url, "--redis-cluster"),
    }
    urls = {}
    for backend, proxy in proxies.items():
        repo = f"bench/redis-ha-{backend}"
        async with session(plan.setup_concurrency) as http:
            subject = await push_subject_image(http, proxy.url, repo)
            pushed = await attach(http, proxy.url, repo, subject, REFERRERS, plan.setup_concurrency)
            listed, _ = await referrer_pages(http, proxy.url, repo, sha256(subject))
        if sorted(listed) != sorted(pushed):
            raise RuntimeError(f"{backend}: the proxy lists {len(listed)} of {REFERRERS}")
        urls[backend] = f"{proxy.url}/v2/{repo}/referrers/{sha256(subject)}"
    rates: dict[str, list[float]] = {backend: [] for backend in urls}
    sides: dict[str, list[dict[str, float]]] = {backend: [] for backend in urls}
    for n in range(plan.rounds):
        print(f"  redis-ha: rate round {n + 1}/{plan.rounds}", flush=True)
        for backend, url in urls.items():
            pids = stack.pids(proxies[backend], redis=backend == "single")
            if backend == "cluster":
                pids |= {f"redis_{node.port}": node.process.pid for node in cluster.nodes}
            meter = CpuMeter(pids)
            async with meter.measuring():
                load = await request_rate(url, connections=CONNECTIONS, seconds=plan.seconds)
            rates[backend].append(load.rate)
            sides[backend].append(
                {**meter.shares, "client_cpu": load.client_cpu, "p50_ms": load.p50_ms}
            )
    return [
        Row(
            SCENARIO,
            f"referrers GET, {REFERRERS} referrers, Redis Cluster (3+3) vs single Redis,"
            f" {CONNECTIONS} conn",
            "req/s",
            Samples.of(rates["cluster"]),
            Samples.of(rates["single"]),
            Target("ratio", ">=", 0.8),
            {
                **{f"single_{k}": v for k, v in medians(sides["single"]).items()},
                **medians(sides["cluster"]),
            },
        )
    ]
