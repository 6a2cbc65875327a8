"""Mixed traffic through a real proxy process in front of a real registry, for a bounded time.

`make soak` runs it long and prints the summary table; the test suite runs a short variant.
Every request targets 127.0.0.1 and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson

from proxy.devstack.oci_client import (
    MANIFEST,
    artifact_manifest,
    push_blob,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import running_proxy, running_redis, running_registry
from proxy.http.errors import INTERNAL_ERROR

MiB = 1024 * 1024
TAG_SETTLE = 30.0  # the proxy writes tag indexes behind attaches; a minute-long retry is a loss


class Sample(NamedTuple):
    t: float  # seconds into the run
    rss: int  # resident bytes
    fds: int  # open file descriptors
    connected: int  # of them, established TCP connections (clients, registry, Redis)

    @property
    def loose_fds(self) -> int:
        """What no live connection explains: files, listeners, sockets left half-closed. Pools
        warm up as the run's peak concurrency grows, so a leak shows here, not in `fds`."""
        return self.fds - self.connected


_ESTABLISHED = "01"


def _established_sockets(pid: int) -> set[str]:
    """The inodes of established TCP sockets in the process's network namespace."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for fields in (line.split() for line in lines):
            if fields[3] == _ESTABLISHED:
                inodes.add(fields[9])
    return inodes


def process_sample(pid: int, t: float) -> Sample:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    established = _established_sockets(pid)
    fds = connected = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        connected += target.startswith("socket:[") and target[8:-1] in established
    return Sample(t, rss, fds, connected)


@dataclass
class SoakResult:
    requests: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    attached: int = 0
    detached: int = 0
    lost_in_answer: int = 0
    lost_in_registry: int = 0
    resurrected: int = 0  # detached, yet still listed by the proxy or the registry's tag index
    tag_lag: float = 0.0  # seconds after the run until the registry's tag indexes were in step
    samples: list[Sample] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return self.by_class["5xx"] + self.by_class["failed"]

    def table(self) -> str:
        rows = [
            ("requests", str(self.requests)),
            *((f"  {op}", str(n)) for op, n in sorted(self.by_operation.items())),
            *((f"status {cls}", str(n)) for cls, n in sorted(self.by_class.items())),
            ("referrers attached", str(self.attached)),
            ("referrers detached", str(self.detached)),
            ("referrers lost (proxy answer)", str(self.lost_in_answer)),
            ("referrers lost (registry tag index)", str(self.lost_in_registry)),
            ("tag indexes in step after", f"{self.tag_lag:.1f} s"),
            ("detached yet still listed", str(self.resurrected)),
        ]
        for label, sample in zip(("start", "middle", "end"), self.steady_samples(), strict=False):
            rows.append(
                (
                    f"proxy at {label} ({sample.t:.0f} s)",
                    f"RSS {sample.rss / MiB:.1f} MiB, {sample.fds} fds"
                    f" ({sample.connected} connections, {sample.loose_fds} other)",
                )
            )
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)

    def steady_samples(self) -> list[Sample]:
        if not self.samples:
            return []
        return [self.samples[0], self.samples[len(self.samples) // 2], self.samples[-1]]


@dataclass
class _World:
    proxy: str
    repos: list[str]
    subjects: dict[str, bytes]
    blobs: dict[str, str]
    attached: dict[str, list[str]]
    detached: dict[str, set[str]]
    keep: int  # referrers per subject before attaches turn into detaches; 0: no limit


async def _one(
    http: aiohttp.ClientSession, world: _World, rng: random.Random, result: SoakResult
) -> None:
    repo = rng.choice(world.repos)
    roll = rng.random()
    base = f"{world.proxy}/v2/{repo}"
    if roll < 0.30:
        operation, call = (
            "pull manifest",
            http.get(f"{base}/manifests/v1", headers={"Accept": MANIFEST}),
        )
    elif roll < 0.50:
        operation, call = "pull blob", http.get(f"{base}/blobs/{world.blobs[repo]}")
    elif roll < 0.65:
        operation = "push blob"
        data = rng.randbytes(64 * 1024)
        try:
            await push_blob(http, world.proxy, repo, data)
            outcome = "2xx"
        except (AssertionError, aiohttp.ClientError):
            outcome = "failed"
        result.by_class[outcome] += 2  # the POST and the PUT of a monolithic upload
        result.by_operation[operation] += 2
        result.requests += 2
        return
    elif roll < 0.85 and world.keep and len(world.attached[repo]) >= world.keep:
        operation = "detach referrer"
        digest = world.attached[repo].pop(0)
        outcome = "failed"
        # Like a client: a 5xx is retried once, and a 404 then means the first one did delete.
        for done in ({202}, {202, 404}):
            status, outcome = await _send(http.delete(f"{base}/manifests/{digest}"))
            _count(result, operation, outcome)
            if status in done:
                world.detached[repo].add(digest)
                return
            if status < 500:
                break
        world.attached[repo].append(digest)
        return
    elif roll < 0.85:
        operation = "attach referrer"
        manifest = artifact_manifest(world.subjects[repo], annotations={"n": str(rng.random())})
        call = http.put(
            f"{base}/manifests/{sha256(manifest)}",
            data=manifest,
            headers={"Content-Type": MANIFEST},
        )
        status, outcome = await _send(call)
        if status == 201:
            world.attached[repo].append(sha256(manifest))
        _count(result, operation, outcome)
        return
    else:
        operation = "list referrers"
        call = http.get(f"{base}/referrers/{sha256(world.subjects[repo])}")
    _count(result, operation, (await _send(call))[1])


async def _send(call: Any) -> tuple[int, str]:
    """The status, and its class: a 5xx the registry made and the proxy relayed is told apart
    from the proxy's own (every proxy-made 5xx is UNAVAILABLE or its internal error)."""
    try:
        async with call as response:
            body = await response.read()
    except aiohttp.ClientError:
        return 0, "failed"
    status = response.status
    if status >= 500:
        try:
            error = orjson.loads(body)["errors"][0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            error = {}
        if (
            error.get("code") not in ("UNAVAILABLE", None)
            and error.get("message") != INTERNAL_ERROR
        ):
            return status, "5xx from the registry"
    return status, f"{status // 100}xx"


def _count(result: SoakResult, operation: str, outcome: str) -> None:
    result.requests += 1
    result.by_operation[operation] += 1
    result.by_class[outcome] += 1


async def soak(
    proxy: str,
    registry: str,
    pid: int,
    *,
    seconds: float,
    connections: int,
    repos: int = 8,
    keep: int = 0,
) -> SoakResult:
    result = SoakResult()
    rng = random.Random(1)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        run = hashlib.sha256(os.urandom(8)).hexdigest()[:8]
        names = [f"soak/{run}/r{n}" for n in range(repos)]
        world = _World(
            proxy,
            names,
            {},
            {},
            {name: [] for name in names},
            {name: set() for name in names},
            keep,
        )
        for name in names:
            world.subjects[name] = await push_subject_image(http, proxy, name)
            world.blobs[name] = await push_blob(http, proxy, name, rng.randbytes(256 * 1024))
        started = time.monotonic()
        deadline = started + seconds

        async def worker(seed: int) -> None:
            own = random.Random(seed)
            while time.monotonic() < deadline:
                await _one(http, world, own, result)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(max(seconds / 20, 0.2))
                result.samples.append(process_sample(pid, time.monotonic() - started))

        await asyncio.gather(sampler(), *(worker(n) for n in range(connections)))
        for name in names:
            expected = set(world.attached[name])
            detached = world.detached[name]
            result.attached += len(expected) + len(detached)
            result.detached += len(detached)
            listed: set[str] = set()
            url: str | None = f"{proxy}/v2/{name}/referrers/{sha256(world.subjects[name])}"
            for _ in range(10_000):
                if url is None:
                    break
                async with http.get(url) as response:
                    listed |= {
                        d["digest"] for d in orjson.loads(await response.read())["manifests"]
                    }
                    link = response.headers.get("Link")
                url = proxy + link[1 : link.index(">")] if link else None
            result.lost_in_answer += len(expected - listed)
            _, in_tag, _ = await settled_tag_index(
                http,
                registry,
                name,
                world.subjects[name],
                sorted(expected),
                TAG_SETTLE,
                any_order=True,
            )
            tagged = {d["digest"] for d in in_tag}
            result.tag_lag = max(result.tag_lag, time.monotonic() - deadline)
            result.lost_in_registry += len(expected - tagged)
            result.resurrected += len(detached & (listed | tagged))
    return result


async def _main(seconds: float, connections: int, repos: int, keep: int, *proxy_args: str) -> int:
    with tempfile.TemporaryDirectory(prefix="referrers-soak-") as tmp:
        workdir = Path(tmp)
        with (
            running_registry(workdir / "registry") as registry,
            running_redis(workdir / "redis") as redis,
            # Hundreds of clients share one address: no per-client transfer limit.
            running_proxy(
                workdir / "proxy",
                registry.url,
                "--redis-url",
                redis.url,
                "--max-transfers-per-client",
                "0",
                *proxy_args,
            ) as proxy,
        ):
            print(f"soak: {connections} connections for {seconds:.0f} s through {proxy.url}")
            result = await soak(
                proxy.url,
                registry.url,
                proxy.process.pid,
                seconds=seconds,
                connections=connections,
                repos=repos,
                keep=keep,
            )
    print(result.table())
    failed = result.server_errors + result.lost_in_answer + result.lost_in_registry
    return 1 if failed + result.resurrected else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--repos", type=int, default=8, help="one subject each")
    parser.add_argument(
        "--keep",
        type=int,
        default=40,
        help="referrers kept per subject: past it, attaches become detaches (0: no limit)",
    )
    parser.add_argument("proxy_args", nargs="*", help="extra proxy flags, after --")
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(_main(args.seconds, args.connections, args.repos, args.keep, *args.proxy_args))
    )


if __name__ == "__main__":
    main()
