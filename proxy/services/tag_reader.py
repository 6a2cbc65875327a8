"""Reads the referrers tag schema in the upstream into the index.

Legacy clients (and proxies before this one) list referrers in a tag-schema index per subject.
Reads revalidate it at most every `refresh` seconds and take in what it lists; while the index
is down, it is what the proxy answers from.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from cachetools import LRUCache

from proxy.config import FallbackMode
from proxy.index import IndexStore
from proxy.index.base import TagSync
from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge
from proxy.oci.manifest import MAX_ANNOTATION_BYTES, Referrer
from proxy.oci.tagschema import TagIndex, TagIndexInvalid, parse_tag_index, tag_names
from proxy.upstream.client import Answer, RegistryClient

log = logging.getLogger(__name__)
_SYNCED_MEMORY = 65_536  # subjects whose last sync this process remembers


def parse_tag_answer(
    repository: str, subject: str, tag: str, answer: Answer, max_annotation_bytes: int
) -> TagIndex | None:
    """The referrers the tag's index lists; None (logged) when it is no referrers index."""
    try:
        return parse_tag_index(
            subject,
            answer.body,
            answer.headers.get(hdrs.CONTENT_TYPE, ""),
            answer.content_digest,
            max_annotation_bytes,
        )
    except TagIndexInvalid as exc:
        log.warning("ignoring %s:%s, not a referrers index: %s", repository, tag, exc)
        return None


@dataclass(frozen=True, slots=True)
class _TagRead:
    referrers: list[Referrer]  # empty when not modified since `digest`
    digest: str


class TagIndexReader:
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
        self.index = index
        self.mode = mode
        self.refresh_seconds = refresh
        self.metrics = metrics
        self.max_annotation_bytes = max_annotation_bytes
        # When this process last knew each subject's tag to be in sync: saves the shared
        # index a round trip on most reads. Bounded, least recently used out.
        self._synced_at: LRUCache[tuple[str, str], float] = LRUCache(_SYNCED_MEMORY)

    async def refresh(
        self, repository: str, subject: str, auth: str | None, *, fresh: bool = False
    ) -> None:
        """Bring the referrers that legacy clients listed upstream into the index, unless it
        looked less than `refresh_seconds` ago (`fresh`: look anyway). An upstream that cannot
        be read is logged and skipped: the index still answers. Referrers deleted through the
        proxy since are tombstoned in the index, so a listing read before the delete brings
        none back."""
        if self.mode is FallbackMode.OFF:
            return
        now = time.time()
        recent = now - self._synced_at.get((repository, subject), -math.inf)
        if not fresh and recent < self.refresh_seconds:
            self.metrics.cache_lookup("tag_schema", True)
            return
        known = await self.index.tag_sync(repository, subject)
        if not fresh and known is not None and now - known.at < self.refresh_seconds:
            self.metrics.cache_lookup("tag_schema", True)
            self._synced(repository, subject, known.at)
            return
        self.metrics.cache_lookup("tag_schema", False)
        read = await self._read(repository, subject, auth, known.digest if known else None)
        if read is None:
            return
        await self.index.add_listed(repository, subject, read.referrers)
        if read.digest or known is not None:
            await self.index.set_tag_sync(repository, subject, TagSync(read.digest, now))
        # No tag-schema index and no marker: a read of a subject nobody wrote to leaves nothing
        # in the shared index, only this process's bounded memory.
        self._synced(repository, subject, now)

    def index_lost(self) -> None:
        """The index failed: it may come back empty, so every subject is re-read from its tag
        on the next query instead of trusting what this process remembers."""
        self._synced_at.clear()

    def _synced(self, repository: str, subject: str, at: float) -> None:
        self._synced_at[repository, subject] = at

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
                    found = parse_tag_answer(
                        repository, subject, tag, answer, self.max_annotation_bytes
                    )
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
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            log.warning("%s %s: tag-schema read failed: %r", repository, subject, exc)
            return None
        return _TagRead(list(listed.values()), digest)
