"""The referrers tag schema in the upstream: read into the index, and kept up to date.

The registry holds the truth (a tagged index survives `garbage-collect --delete-untagged` and a
lost Redis); the index is the fast path. Reads are revalidated at most every `refresh` seconds;
writes go through the subject's lock, so concurrent attaches lose nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import aiohttp

from proxy.config import FallbackMode
from proxy.errors import OCIError
from proxy.index import IndexStore
from proxy.index.base import TagSync
from proxy.manifest import IMAGE_INDEX, MAX_ANNOTATION_BYTES, Referrer
from proxy.metrics import Metrics
from proxy.referrers import render_index
from proxy.registry_client import Answer, RegistryClient
from proxy.tagschema import (
    TagIndex,
    TagIndexInvalid,
    missing_children,
    parse_tag_index,
    tag_name,
    tag_names,
)

log = logging.getLogger(__name__)
_SYNCED_MEMORY = 65_536  # subjects whose last sync this process remembers
_LOGGED_BODY = 300  # bytes of an upstream refusal worth a log line


def _parse(
    repository: str, subject: str, tag: str, answer: Answer, max_annotation_bytes: int
) -> TagIndex | None:
    try:
        return parse_tag_index(
            subject,
            answer.body,
            answer.headers.get("Content-Type", ""),
            answer.content_digest,
            max_annotation_bytes,
        )
    except TagIndexInvalid as exc:
        log.warning("ignoring %s:%s, not a referrers index: %s", repository, tag, exc)
        return None


def apply_changes(listed: list[Referrer], changes: list[Referrer | str]) -> list[Referrer]:
    """The list after `changes` in order: a Referrer is added unless listed, a digest removed."""
    kept = list(listed)
    for change in changes:
        if isinstance(change, str):
            kept = [r for r in kept if r.digest != change]
        elif all(r.digest != change.digest for r in kept):
            kept.append(change)
    return kept


@dataclass(frozen=True, slots=True)
class _TagRead:
    referrers: list[Referrer]  # empty when not modified since `digest`
    digest: str


@dataclass
class _Batch:
    changes: list[Referrer | str] = field(default_factory=list)
    task: asyncio.Task[None] = field(init=False)


class FallbackTags:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore,
        mode: FallbackMode,
        refresh: float,
        metrics: Metrics,
        *,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
    ) -> None:
        self.client = client
        self.max_annotation_bytes = max_annotation_bytes
        self.index = index
        self.mode = mode
        self.refresh_seconds = refresh
        self.metrics = metrics
        self._pending: dict[tuple[str, str, str | None], _Batch] = {}
        # When this process last knew each subject's tag to be in sync: saves the shared
        # index a round trip on most reads. Bounded, oldest first out.
        self._synced_at: dict[tuple[str, str], float] = {}

    async def refresh(self, repository: str, subject: str, auth: str | None) -> None:
        """Bring the referrers that legacy clients listed upstream into the index, unless it
        looked less than `refresh_seconds` ago. An upstream that cannot be read is logged and
        skipped: the index still answers."""
        if self.mode is FallbackMode.OFF:
            return
        now = time.time()
        if now - self._synced_at.get((repository, subject), -math.inf) < self.refresh_seconds:
            self.metrics.cache_lookup("tag_schema", True)
            return
        known = await self.index.tag_sync(repository, subject)
        if known is not None and now - known.at < self.refresh_seconds:
            self.metrics.cache_lookup("tag_schema", True)
            self._synced(repository, subject, known.at)
            return
        self.metrics.cache_lookup("tag_schema", False)
        read = await self._read(repository, subject, auth, known.digest if known else None)
        if read is None:
            return
        for referrer in read.referrers:
            await self.index.add(repository, referrer)
        if read.digest or known is not None:
            await self._set_tag_sync(repository, subject, TagSync(read.digest, now))
        else:
            # No tag-schema index and no marker: a read of a subject nobody wrote to leaves
            # nothing in the shared index, only this process's bounded memory.
            self._synced(repository, subject, now)

    async def _set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        await self.index.set_tag_sync(repository, subject, sync)
        self._synced(repository, subject, sync.at)

    def index_lost(self) -> None:
        """The index failed: it may come back empty, so every subject is re-read from its tag
        on the next query instead of trusting what this process remembers."""
        self._synced_at.clear()

    def _synced(self, repository: str, subject: str, at: float) -> None:
        key = (repository, subject)
        self._synced_at.pop(key, None)
        self._synced_at[key] = at
        if len(self._synced_at) > _SYNCED_MEMORY:
            del self._synced_at[next(iter(self._synced_at))]

    async def without_index(
        self, repository: str, subject: str, auth: str | None
    ) -> list[Referrer] | None:
        """What the registry's tag-schema indexes list, for when the index itself is down;
        None when they cannot be read (or are not to be)."""
        if self.mode is FallbackMode.OFF:
            return None
        read = await self._read(repository, subject, auth, None)
        return read.referrers if read is not None else None

    async def _read(
        self, repository: str, subject: str, auth: str | None, etag: str | None
    ) -> _TagRead | None:
        """Every tag-schema name of `subject`, merged; None when the upstream would not say."""
        names = tag_names(subject)
        if len(names) > 1 or not etag:
            etag = None
        listed: dict[str, Referrer] = {}
        digest = ""
        try:
            for tag in names:
                answer = await self.client.get_manifest(repository, tag, auth, etag=etag)
                if answer.status == 304:
                    return _TagRead([], etag or "")
                if answer.status == 200:
                    found = _parse(repository, subject, tag, answer, self.max_annotation_bytes)
                    if found is not None:
                        if any(r.trimmed for r in found.referrers):
                            log.warning(
                                "%s:%s: annotations left out of descriptors", repository, tag
                            )
                            self.metrics.trimmed("tag_schema")
                        listed.update((r.digest, r) for r in found.referrers)
                        digest = digest or found.digest
                elif answer.status != 404:
                    log.info("%s:%s unreadable upstream (%d)", repository, tag, answer.status)
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s %s: tag-schema read failed: %r", repository, subject, exc)
            return None
        return _TagRead(list(listed.values()), digest)

    async def record(self, repository: str, referrer: Referrer, auth: str | None) -> None:
        if self.mode is FallbackMode.WRITE:
            await self._change(repository, referrer.subject, auth, referrer)

    async def forget(self, repository: str, subject: str, digest: str, auth: str | None) -> None:
        if self.mode is FallbackMode.WRITE:
            await self._change(repository, subject, auth, digest)

    async def _change(
        self, repository: str, subject: str, auth: str | None, change: Referrer | str
    ) -> None:
        """Join the subject's next write (group commit) and wait until it is in the registry.

        Changes that arrive while a write waits for the subject's lock ride along with it, so
        N concurrent attaches cost far fewer than N rewrites of the index. Only callers with the
        same credentials share a write: the proxy never writes with anyone else's.
        """
        key = (repository, subject, auth)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch()
            batch.task = asyncio.create_task(self._flush(key, batch))
        batch.changes.append(change)
        await asyncio.shield(batch.task)

    async def _flush(self, key: tuple[str, str, str | None], batch: _Batch) -> None:
        repository, subject, auth = key
        try:
            async with self.index.subject_lock(repository, subject):
                self._close(key, batch)
                await self._write(repository, subject, auth, batch.changes)
        finally:
            # Also when the lock could not be taken: a later change must start a new batch,
            # not join this failed one.
            self._close(key, batch)

    def _close(self, key: tuple[str, str, str | None], batch: _Batch) -> None:
        """No more changes join `batch`."""
        if self._pending.get(key) is batch:
            del self._pending[key]

    async def _write(
        self, repository: str, subject: str, auth: str | None, changes: list[Referrer | str]
    ) -> None:
        """Read, change and write back the subject's tag-schema index (under its lock); then
        delete the superseded index by digest so no garbage piles up."""
        tag = tag_name(subject)
        answer = await self.client.get_manifest(repository, tag, auth)
        current: TagIndex | None = None
        if answer.status == 200:
            current = _parse(repository, subject, tag, answer, self.max_annotation_bytes)
            if current is None:
                return  # never overwrite what is not ours to read
        elif answer.status != 404:
            raise _upstream_refused("read", repository, tag, answer)
        listed = current.referrers if current is not None else []
        known = await self.index.tag_sync(repository, subject)
        if current is not None and (known is None or known.digest != current.digest):
            # Someone else wrote the tag since the proxy last did: take in what they listed.
            removed = {change for change in changes if isinstance(change, str)}
            for referrer in listed:
                if referrer.digest not in removed:
                    await self.index.add(repository, referrer)
        kept = apply_changes(listed, changes)
        if kept == listed:
            return
        digest = await self._put(repository, tag, kept, auth)
        if current is not None and current.digest != digest:
            await self._delete_superseded(repository, tag, current.digest, auth)
        await self._set_tag_sync(repository, subject, TagSync(digest, time.time()))
        log.info(
            "%s:%s now lists %d referrers (%d changes)", repository, tag, len(kept), len(changes)
        )

    async def _put(self, repository: str, tag: str, kept: list[Referrer], auth: str | None) -> str:
        """Write the index listing `kept`; its digest, or "" when nothing is left to list.

        A listed manifest deleted from the registry (by a detach whose own change is still
        queued, or by a client that bypassed the proxy) makes the registry refuse any index that
        lists it. Such children are dropped, from the proxy's index too, and the write retried:
        each retry lists fewer, so it ends, and a stale entry cannot block a subject's tag.
        """
        while kept:
            body = render_index(r.descriptor for r in kept)
            put = await self.client.put_manifest(repository, tag, body, IMAGE_INDEX, auth)
            if put.status == 201:
                return put.headers.get("Docker-Content-Digest", "")
            listed = {r.digest for r in kept}
            gone = missing_children(put.body) & listed if put.status == 400 else set()
            if not gone:
                raise _upstream_refused("write", repository, tag, put)
            log.warning(
                "%s:%s listed %d manifests the registry no longer has; dropping them: %s",
                repository,
                tag,
                len(gone),
                ", ".join(sorted(gone)),
            )
            for digest in gone:
                await self.index.remove(repository, digest)
            kept = [r for r in kept if r.digest not in gone]
        return ""

    async def _delete_superseded(
        self, repository: str, tag: str, digest: str, auth: str | None
    ) -> None:
        gone = await self.client.delete_manifest(repository, digest, auth)
        if gone.status not in (202, 404):
            log.warning(
                "%s: superseded %s index %s not deleted (%d)", repository, tag, digest, gone.status
            )


def _upstream_refused(action: str, repository: str, tag: str, answer: Answer) -> OCIError:
    log.error(
        "%s:%s: upstream refused the tag-schema %s (%d): %r",
        repository,
        tag,
        action,
        answer.status,
        answer.body[:_LOGGED_BODY],
    )
    return OCIError(
        502, "UNAVAILABLE", f"upstream refused to {action} referrers tag {tag} ({answer.status})"
    )
