"""The Referrers API the proxy answers itself: how fast, compared with the registry's own
manifest GET (the cheapest read a client makes anyway), and whether a page costs the same at a
few and at many referrers."""

from __future__ import annotations

import orjson

from bench.content import attach, referrer_pages, session
from bench.load import request_rate
from bench.procfs import CpuMeter
from bench.report import Row, Target
from bench.stack import Plan, Stack
from bench.stats import Samples, medians
from proxy.devstack.oci_client import MANIFEST, push_subject_image, sha256
from proxy.devstack.processes import ProxyProcess

SCENARIO = "referrers"
CONNECTIONS = 8
# The per-page subjects are served with pages of 10, so a page of 10,000 referrers carries as
# many descriptors as the whole list of 10 and only the index's size differs.
PAGE_SIZE = 10


async def _subject(proxy: ProxyProcess, repo: str, count: int, plan: Plan) -> tuple[str, str]:
    """A subject in `repo` with `count` referrers pushed through `proxy`: (repo, its digest)."""
    async with session(plan.setup_concurrency) as http:
        subject = await push_subject_image(http, proxy.url, repo)
        pushed = await attach(http, proxy.url, repo, subject, count, plan.setup_concurrency)
        listed, _ = await referrer_pages(http, proxy.url, repo, sha256(subject))
    if sorted(listed) != sorted(pushed):
        raise RuntimeError(f"{repo}: the proxy lists {len(listed)} of {count} referrers")
    return repo, sha256(subject)


async def run(stack: Stack, plan: Plan) -> list[Row]:
    return [*await _rates(stack, plan), *await _pages(stack, plan)]


async def _rates(stack: Stack, plan: Plan) -> list[Row]:
    """Referrers GET rate at 10 and 1,000 referrers, Redis and embedded index, each proxy with
    default flags (so `--fallback-tags write`: every GET also checks when the tag-schema
    index was last revalidated)."""
    proxies = {"redis": stack.redis_proxy("redis"), "embedded": stack.proxy("embedded")}
    urls: dict[tuple[str, int], str] = {}
    for backend, proxy in proxies.items():
        for count in plan.referrer_counts:
            print(f"  referrers: pushing {count} referrers through the {backend} proxy", flush=True)
            repo, digest = await _subject(proxy, f"bench/referrers-{backend}-{count}", count, plan)
            urls[(backend, count)] = f"{proxy.url}/v2/{repo}/referrers/{digest}"
    direct = f"{stack.registry.url}/v2/{repo}/manifests/v1"  # the last subject image
    direct_rates: list[float] = []
    direct_side: list[dict[str, float]] = []
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in urls}
    sides: dict[tuple[str, int], list[dict[str, float]]] = {key: [] for key in urls}
    for n in range(plan.rounds):
        print(f"  referrers: rate round {n + 1}/{plan.rounds}", flush=True)
        meter = CpuMeter(stack.pids())
        async with meter.measuring():
            load = await request_rate(
                direct, connections=CONNECTIONS, seconds=plan.seconds, headers={"Accept": MANIFEST}
            )
        direct_rates.append(load.rate)
        direct_side.append({**meter.shares, "client_cpu": load.client_cpu, "p50_ms": load.p50_ms})
        for (backend, count), url in urls.items():
            meter = CpuMeter(stack.pids(proxies[backend], redis=backend == "redis"))
            async with meter.measuring():
                load = await request_rate(url, connections=CONNECTIONS, seconds=plan.seconds)
            rates[(backend, count)].append(load.rate)
            sides[(backend, count)].append(
                {**meter.shares, "client_cpu": load.client_cpu, "p50_ms": load.p50_ms}
            )
    baseline = Samples.of(direct_rates)
    direct_extra = {f"direct_{k}": v for k, v in medians(direct_side).items()}
    return [
        Row(
            SCENARIO,
            f"referrers GET, {count:,} referrers ({backend}) vs registry manifest GET,"
            f" {CONNECTIONS} conn",
            "req/s",
            Samples.of(rates[(backend, count)]),
            baseline,
            Target("ratio", ">=", 1.0),
            {**direct_extra, **medians(sides[(backend, count)])},
        )
        for backend, count in urls
    ]


async def _pages(stack: Stack, plan: Plan) -> list[Row]:
    """Latency of one page (1 connection, p50) at few and many referrers. The subjects are
    filled through proxies with `--fallback-tags off`: 10,000 descriptors would not fit the
    registry's 4 MiB manifest cap as one tag-schema index."""
    small, large = plan.page_counts
    flags = ("--fallback-tags", "off", "--referrers-page-size", str(PAGE_SIZE))
    proxies = {
        "redis": stack.redis_proxy("redis-pages", *flags),
        "embedded": stack.proxy("embedded-pages", *flags),
    }
    urls: dict[tuple[str, str], str] = {}
    for backend, proxy in proxies.items():
        print(f"  referrers: pushing {small} and {large} referrers ({backend})", flush=True)
        repo, digest = await _subject(proxy, f"bench/pages-{backend}-{small}", small, plan)
        urls[(backend, "few")] = f"{proxy.url}/v2/{repo}/referrers/{digest}"
        repo, digest = await _subject(proxy, f"bench/pages-{backend}-{large}", large, plan)
        async with session() as http:
            _, pages = await referrer_pages(http, proxy.url, repo, digest)
            async with http.get(pages[len(pages) // 2]) as middle:
                listed = len(orjson.loads(await middle.read())["manifests"])
        if listed != PAGE_SIZE:
            raise RuntimeError(f"middle page of {large} referrers lists {listed}")
        urls[(backend, "first")], urls[(backend, "middle")] = pages[0], pages[len(pages) // 2]
    p50: dict[tuple[str, str], list[float]] = {key: [] for key in urls}
    for n in range(plan.rounds):
        print(f"  referrers: page latency round {n + 1}/{plan.rounds}", flush=True)
        for key, url in urls.items():
            load = await request_rate(url, connections=1, seconds=plan.seconds)
            p50[key].append(load.p50_ms)
    return [
        Row(
            SCENARIO,
            f"referrers {page} page p50, {large:,} vs {small} referrers, {PAGE_SIZE} a page"
            f" ({backend})",
            "ms",
            Samples.of(p50[(backend, page)]),
            Samples.of(p50[(backend, "few")]),
            Target("ratio", "<=", 1.5),
        )
        for backend in proxies
        for page in ("first", "middle")
    ]
