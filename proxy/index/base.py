"""The IndexStore protocol: referrers per (repository, subject), in arrival order.

Each referrer gets a position from its subject's increasing counter when first recorded (per
subject, so a Redis Cluster needs no key shared by all subjects). Pages are cut by
position, so a page costs O(log n + page size) and stays stable while new referrers arrive
(they land after every existing cursor).

A removed referrer leaves a tombstone under its subject for TOMBSTONE_SECONDS: a tag-schema
listing read before the delete (by a refresh in flight, or from a copy not yet rewritten) must
not bring it back. Only a push of the referrer itself lifts it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from proxy.oci.manifest import Referrer

TOMBSTONE_SECONDS = 86_400.0


class IndexUnavailable(Exception):
    """The index could not be read or written; the request may be retried."""


@dataclass(frozen=True, slots=True)
class Page:
    descriptors: list[bytes]
    next_after: int | None  # position to continue after, or None on the last page


@dataclass(frozen=True, slots=True)
class TagSync:
    """When the subject's tag-schema index was last read or written, and its digest then
    ("" when there was none): the ETag to revalidate it with."""

    digest: str
    at: float


class IndexStore(Protocol):
    async def add(self, repository: str, referrer: Referrer) -> None:
        """Record `referrer`, just pushed, under its subject (lifting any tombstone);
        recording it again changes nothing."""

    async def add_listed(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> set[str]:
        """Record, in order, what a tag-schema index of `subject` lists, except the tombstoned
        and those a push recorded under another subject; the digests of `referrers` it now
        lists (new or not)."""

    async def remove(self, repository: str, digest: str) -> None:
        """Forget the referrer with manifest `digest`, if it is one, and tombstone it."""

    async def tombstoned(self, repository: str, subject: str, digest: str) -> bool:
        """Whether the referrer was removed from `subject` within TOMBSTONE_SECONDS."""

    async def page(
        self,
        repository: str,
        subject: str,
        artifact_types: Collection[str],
        after: int,
        limit: int,
    ) -> Page:
        """Up to `limit` descriptors with position > `after`, of any of `artifact_types`
        (all types when empty)."""

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None: ...

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        """Remember `sync`; one with no digest (no tag-schema index upstream) forgets the
        subject's marker instead, so subjects without one hold no state."""

    def subject_lock(self, repository: str, subject: str) -> AbstractAsyncContextManager[None]:
        """Held while the subject's tag-schema index is read, changed and written back, so
        concurrent attaches (in this process or, with Redis, in any replica) lose nothing."""

    async def ping(self) -> None:
        """Raise IndexUnavailable when the index cannot serve."""

    async def close(self) -> None: ...


def merge_positions(
    runs: list[list[tuple[int, str]]], limit: int
) -> tuple[list[tuple[int, str]], bool]:
    """Merge position-sorted runs (one per artifact type) into the first `limit` entries,
    and whether more follow."""
    merged = sorted({entry for run in runs for entry in run})
    return merged[:limit], len(merged) > limit
