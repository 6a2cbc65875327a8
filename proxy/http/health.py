"""Readiness: can the proxy serve, i.e. do the upstream and the index answer?

Notes report what is degraded without making the proxy unready: tag-schema writes that fail
leave pulls and referrers answers whole, and taking every replica out of service for them would
turn a degraded copy into an outage.

Probes come often and from several places, so one check runs at a time and its result is kept
for `ttl` seconds: the upstream sees at most one `GET /v2/` per `ttl` however many probes arrive.
What a failed check reports is a word and an exception class, never a URL, address or password.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy.index import IndexStore, IndexUnavailable
from proxy.oci.targets import upstream_url
from proxy.services.tag_writer import TagIndexWriter

OK = "ok"


@dataclass(frozen=True, slots=True)
class Report:
    checks: dict[str, str]  # name -> "ok" or what is wrong
    notes: dict[str, str]  # name -> "ok" or what is degraded; not part of `ready`

    @property
    def ready(self) -> bool:
        return all(state == OK for state in self.checks.values())


class Readiness:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: URL,
        index: IndexStore,
        writer: TagIndexWriter | None = None,
        *,
        timeout: float = 2.0,
        ttl: float = 1.0,
    ) -> None:
        self.session = session
        self.upstream = upstream
        self.index = index
        self.writer = writer
        self.timeout = timeout
        self.ttl = ttl
        self._lock = asyncio.Lock()
        self._last: tuple[float, Report] | None = None

    async def report(self) -> Report:
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.ttl:
                return self._last[1]
            upstream, index = await asyncio.gather(self._upstream(), self._index())
            report = Report({"upstream": upstream, "index": index}, self._notes())
            self._last = (time.monotonic(), report)
            return report

    def _notes(self) -> dict[str, str]:
        if self.writer is None:
            return {}
        failing = self.writer.failing()
        return {"tag_writes": f"failing for {failing} subjects, retrying" if failing else OK}

    async def _upstream(self) -> str:
        """Any answer from the API root that a registry gives: 200, or 401 with auth on."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.get(
                    upstream_url(self.upstream, "/v2/"), allow_redirects=False
                ) as response:
                    await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"unreachable ({type(exc).__name__})"
        if response.status not in (200, 401):
            return f"answered {response.status}"
        return OK

    async def _index(self) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                await self.index.ping()
        except (IndexUnavailable, TimeoutError) as exc:
            return f"unavailable ({type(exc).__name__})"
        return OK
