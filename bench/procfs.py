"""What a process costs, read from /proc: CPU time and resident memory."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time so far (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited (the load tools)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes: resident now, and the most it ever was."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


@dataclass
class CpuMeter:
    """Cores each watched process kept busy while the block ran (1.0 = one core saturated)."""

    pids: Mapping[str, int]
    shares: dict[str, float] = field(default_factory=dict)

    @asynccontextmanager
    async def measuring(self) -> AsyncIterator[CpuMeter]:
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        started = time.monotonic()
        yield self
        elapsed = max(time.monotonic() - started, 1e-9)
        self.shares = {
            f"{name}_cpu": (cpu_seconds(pid) - before[name]) / elapsed
            for name, pid in self.pids.items()
        }


def per_request(shares: Mapping[str, float], rate: float) -> dict[str, float]:
    """Cores busy (CpuMeter.shares) over requests per second: CPU milliseconds per request."""
    return {
        f"{name.removesuffix('_cpu')}_ms_per_req": 1000 * share / rate
        for name, share in shares.items()
    }


def children(pid: int) -> list[int]:
    """The processes `pid` started (its main thread's children)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@dataclass
class RssPeak:
    """The highest VmRSS seen, sampled every `every` seconds while the block runs: VmHWM alone
    would also count whatever the process did before."""

    pid: int
    every: float = 0.02
    peak: int = 0

    @asynccontextmanager
    async def sampling(self) -> AsyncIterator[RssPeak]:
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, memory(self.pid)[0])
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)

        task = asyncio.create_task(sample())
        try:
            yield self
        finally:
            stop.set()
            await task
            self.peak = max(self.peak, memory(self.pid)[0])
