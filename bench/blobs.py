"""Blob GET and upload throughput, direct and through the proxy, and the proxy's memory while
the bytes stream through it. curl moves the bytes: direct it reaches what the registry can
serve while using a small share of a core (its CPU is in each row's extra)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.content import push_big_blob, session, start_upload, write_blob_file
from bench.load import Transfer, download, upload
from bench.procfs import CpuMeter, MiB, RssPeak
from bench.report import Row, Target
from bench.stack import Plan, Stack, size_label
from bench.stats import Samples, medians

SCENARIO = "blobs"
RSS_LIMIT_MIB = 100e6 / MiB  # the target says 100 MB
REPO = "bench/blobs"


class _Sides:
    """Per-side samples: throughput in MB/s, the proxy's peak RSS, and CPU shares."""

    def __init__(self) -> None:
        self.speed: dict[str, list[float]] = {"direct": [], "proxy": []}
        self.cpu: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
        self.rss: list[float] = []

    def extra(self) -> dict[str, float]:
        return {
            **{f"direct_{k}": v for k, v in medians(self.cpu["direct"]).items()},
            **medians(self.cpu["proxy"]),
        }


async def _measure(
    stack: Stack, sides: _Sides, side: str, move: Callable[[], Awaitable[Transfer]]
) -> None:
    proxy = stack.proxy("blobs")
    meter = CpuMeter(stack.pids(proxy if side == "proxy" else None))
    async with meter.measuring(), RssPeak(proxy.process.pid).sampling() as peak:
        moved = await move()
    sides.speed[side].append(moved.bytes_per_second / 1e6)
    sides.cpu[side].append({**meter.shares, "client_cpu": moved.client_cpu})
    if side == "proxy":
        sides.rss.append(peak.peak / MiB)


async def run(stack: Stack, plan: Plan) -> list[Row]:
    proxy = stack.proxy("blobs")  # embedded index, default flags
    bases = {"direct": stack.registry.url, "proxy": proxy.url}
    source = stack.workdir / "upload.bin"
    upload_digest = write_blob_file(source, plan.upload_bytes)
    async with session() as http:
        blob = await push_big_blob(http, stack.registry.url, REPO, plan.blob_bytes)

        def getter(side: str) -> Callable[[], Awaitable[Transfer]]:
            return lambda: download(f"{bases[side]}/v2/{REPO}/blobs/{blob}", plan.blob_bytes)

        def putter(side: str, n: int) -> Callable[[], Awaitable[Transfer]]:
            async def put() -> Transfer:
                location = await start_upload(http, bases[side], f"bench/uploads-{side}-{n}")
                joiner = "&" if "?" in location else "?"
                return await upload(
                    f"{location}{joiner}digest={upload_digest}", source, plan.upload_bytes
                )

            return put

        if plan.warm_up:  # page cache and connection pool
            await getter("direct")()
            await getter("proxy")()
        gets, puts = _Sides(), _Sides()
        for n in range(plan.rounds):
            print(f"  blobs: round {n + 1}/{plan.rounds}", flush=True)
            for side in ("direct", "proxy"):
                await _measure(stack, gets, side, getter(side))
            for side in ("direct", "proxy"):
                await _measure(stack, puts, side, putter(side, n))
    source.unlink()
    blob_size, upload_size = size_label(plan.blob_bytes), size_label(plan.upload_bytes)
    return [
        Row(
            SCENARIO,
            f"blob GET {blob_size}, throughput",
            "MB/s",
            Samples.of(gets.speed["proxy"]),
            Samples.of(gets.speed["direct"]),
            Target("ratio", ">=", 0.5),
            gets.extra(),
        ),
        Row(
            SCENARIO,
            f"blob upload {upload_size}, throughput",
            "MB/s",
            Samples.of(puts.speed["proxy"]),
            Samples.of(puts.speed["direct"]),
            Target("ratio", ">=", 0.95),
            puts.extra(),
        ),
        Row(
            SCENARIO,
            f"proxy peak RSS during blob GET {blob_size}",
            "MiB",
            Samples.of(gets.rss),
            target=Target("value", "<", round(RSS_LIMIT_MIB, 1)),
        ),
        Row(
            SCENARIO,
            f"proxy peak RSS during upload {upload_size}",
            "MiB",
            Samples.of(puts.rss),
        ),
    ]
