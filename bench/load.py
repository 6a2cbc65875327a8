"""The load tools, run as subprocesses: wrk for GET rates and latencies (C, a fraction of a core
at these rates), hey for HEAD (Debian's wrk 4.1 waits forever for the body a HEAD answer
announces), curl for bulk bytes. Each call reports the tool's own CPU, so a reader can see the
client was not the limit; any error or non-2xx answer fails the run instead of skewing it."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import children_cpu_seconds

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


class LoadError(RuntimeError):
    """A load tool failed or saw errors: the figure would not mean what it says."""


@dataclass(frozen=True)
class Load:
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    client_cpu: float  # cores the load tool kept busy


async def _run(*argv: str) -> tuple[str, float, float]:
    """stdout, wall seconds and CPU seconds of one tool run."""
    cpu_before, started = children_cpu_seconds(), time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise LoadError(f"{argv[0]} exited {process.returncode}: {err.decode()[-500:]}")
    return out.decode(), wall, children_cpu_seconds() - cpu_before


def _header_args(flag: str, headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in (flag, f"{name}: {value}")]


def parse_wrk(text: str) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from `wrk --latency` output."""
    problems = re.findall(r"^\s*(Non-2xx or 3xx responses: \d+|Socket errors: .*)$", text, re.M)
    if problems:
        raise LoadError("wrk saw errors: " + "; ".join(problems))
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    percentiles = {
        percent: float(number) * _UNITS[unit]
        for percent, number, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    if rate is None or "50" not in percentiles or "99" not in percentiles:
        raise LoadError(f"unexpected wrk output: {text[-500:]}")
    return float(rate.group(1)), percentiles["50"], percentiles["99"]


def parse_hey(text: str) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from hey's summary."""
    statuses = dict(re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", text, re.M))
    if "Error distribution:" in text or not statuses or set(statuses) != {"200"}:
        raise LoadError(f"hey saw errors or non-200 answers: {text[-500:]}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    percentiles = dict(re.findall(r"^\s+(\d+)% in ([\d.]+) secs", text, re.M))
    if rate is None or "50" not in percentiles or "99" not in percentiles:
        raise LoadError(f"unexpected hey output: {text[-500:]}")
    return float(rate.group(1)), float(percentiles["50"]) * 1e3, float(percentiles["99"]) * 1e3


async def request_rate(
    url: str,
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Load:
    """Closed-loop load: `connections` keep-alive connections, each sending its next request as
    soon as the answer arrived."""
    headers = headers or {}
    if method == "GET":
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(round(seconds), 1)}s", "--latency"]
        out, wall, cpu = await _run(*argv, *_header_args("-H", headers), url)
        rate, p50, p99 = parse_wrk(out)
    elif method == "HEAD":
        argv = ["hey", "-z", f"{seconds}s", "-c", str(connections), "-m", "HEAD"]
        out, wall, cpu = await _run(*argv, *_header_args("-H", headers), url)
        rate, p50, p99 = parse_hey(out)
    else:
        raise ValueError(f"no load tool for {method}")
    return Load(rate, p50, p99, cpu / wall)


@dataclass(frozen=True)
class Transfer:
    bytes_per_second: float
    client_cpu: float


async def download(url: str, expected_size: int) -> Transfer:
    """GET `url` into /dev/null with curl and check every byte arrived."""
    out, wall, cpu = await _run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
        url,
    )
    status, size, speed = out.split()
    if status != "200" or int(size) != expected_size:
        raise LoadError(f"GET {url}: {status}, {size} of {expected_size} bytes")
    return Transfer(float(speed), cpu / wall)


async def upload(url: str, source: Path, expected_size: int, status: int = 201) -> Transfer:
    """PUT the file `source` as the body (streamed by curl, no `Expect: 100-continue` pause)."""
    out, wall, cpu = await _run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-X",
        "PUT",
        "-T",
        str(source),
        "-H",
        "Expect:",
        "-H",
        "Content-Type: application/octet-stream",
        "-w",
        "%{http_code} %{size_upload} %{speed_upload}",
        url,
    )
    answered, size, speed = out.split()
    if answered != str(status) or int(size) != expected_size:
        raise LoadError(f"PUT {url}: {answered}, {size} bytes sent")
    return Transfer(float(speed), cpu / wall)
