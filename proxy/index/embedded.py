"""The in-process index: no external service, lost on restart (the registry keeps the truth)."""

from __future__ import annotations

import asyncio
import weakref
from bisect import bisect_right
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cachetools import TTLCache

from proxy.index.base import TOMBSTONE_SECONDS, Page, TagSync, merge_positions
from proxy.oci.manifest import Referrer


@dataclass
class _Run:
    """Digests in position order; positions only grow, so appends keep it sorted."""

    positions: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def append(self, position: int, digest: str) -> None:
        self.positions.append(position)
        self.digests.append(digest)

    def discard(self, position: int) -> None:
        at = bisect_right(self.positions, position) - 1
        if at >= 0 and self.positions[at] == position:
            del self.positions[at], self.digests[at]

    def after(self, position: int, limit: int) -> list[tuple[int, str]]:
        start = bisect_right(self.positions, position)
        end = start + limit
        return list(zip(self.positions[start:end], self.digests[start:end], strict=True))


@dataclass
class _Subject:
    all: _Run = field(default_factory=_Run)
    by_type: dict[str, _Run] = field(default_factory=dict)
    descriptors: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Recorded:
    subject: str
    artifact_type: str | None
    position: int


_TOMBSTONES = 65_536


class EmbeddedIndex:
    """Every method runs without awaiting, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._position = 0
        self._subjects: dict[tuple[str, str], _Subject] = {}
        self._recorded: dict[tuple[str, str], _Recorded] = {}
        self._tag_syncs: dict[tuple[str, str], TagSync] = {}
        # (repository, subject, digest) of removed referrers; the oldest go first past the bound.
        self._tombstones: TTLCache[tuple[str, str, str], bool] = TTLCache(
            maxsize=_TOMBSTONES, ttl=TOMBSTONE_SECONDS
        )
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def add(self, repository: str, referrer: Referrer) -> None:
        self._tombstones.pop((repository, referrer.subject, referrer.digest), None)
        self._record(repository, referrer.subject, referrer)

    async def add_listed(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> set[str]:
        return {
            referrer.digest
            for referrer in referrers
            if (repository, subject, referrer.digest) not in self._tombstones
            and self._record(repository, subject, referrer)
        }

    async def tombstoned(self, repository: str, subject: str, digest: str) -> bool:
        return (repository, subject, digest) in self._tombstones

    def _record(self, repository: str, subject_digest: str, referrer: Referrer) -> bool:
        """Whether the subject lists it now."""
        key = (repository, referrer.digest)
        recorded = self._recorded.get(key)
        if recorded is not None and recorded.subject != subject_digest:
            return False  # recorded under its own subject: a listing elsewhere moves nothing
        subject = self._subjects.setdefault((repository, subject_digest), _Subject())
        subject.descriptors[referrer.digest] = referrer.descriptor
        if recorded is not None:
            return True
        self._position += 1
        subject.all.append(self._position, referrer.digest)
        if referrer.artifact_type is not None:
            run = subject.by_type.setdefault(referrer.artifact_type, _Run())
            run.append(self._position, referrer.digest)
        self._recorded[key] = _Recorded(subject_digest, referrer.artifact_type, self._position)
        return True

    async def remove(self, repository: str, digest: str) -> None:
        recorded = self._recorded.pop((repository, digest), None)
        if recorded is None:
            return
        self._tombstones[(repository, recorded.subject, digest)] = True
        subject = self._subjects[(repository, recorded.subject)]
        subject.all.discard(recorded.position)
        if recorded.artifact_type is not None:
            subject.by_type[recorded.artifact_type].discard(recorded.position)
        del subject.descriptors[digest]
        if not subject.descriptors:
            del self._subjects[(repository, recorded.subject)]

    async def page(
        self,
        repository: str,
        subject: str,
        artifact_types: Collection[str],
        after: int,
        limit: int,
    ) -> Page:
        entry = self._subjects.get((repository, subject))
        if entry is None:
            return Page([], None)
        if artifact_types:
            runs = [
                entry.by_type[t].after(after, limit + 1)
                for t in artifact_types
                if t in entry.by_type
            ]
        else:
            runs = [entry.all.after(after, limit + 1)]
        chosen, more = merge_positions(runs, limit)
        descriptors = [entry.descriptors[digest] for _, digest in chosen]
        return Page(descriptors, chosen[-1][0] if more else None)

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None:
        return self._tag_syncs.get((repository, subject))

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        if sync.digest:
            self._tag_syncs[(repository, subject)] = sync
        else:
            self._tag_syncs.pop((repository, subject), None)

    @asynccontextmanager
    async def subject_lock(self, repository: str, subject: str) -> AsyncIterator[None]:
        lock = self._locks.get((repository, subject))
        if lock is None:
            lock = self._locks[(repository, subject)] = asyncio.Lock()
        async with lock:
            yield

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
