"""Keeps each subject's tag-schema index in the upstream, the copy for clients that bypass the
proxy, in step with the index.

The durable record of a referrer is its own manifest and keep tag (keep_tags.py) and the index;
the tag-schema index is rendered from the index whenever a subject changes, so it heals itself:
a write that failed, or never ran, is made good by the subject's next one.

With keep tags on and the index in Redis (which outlives the proxy), an attach does not wait for
it: the write runs behind, a `delay` after the
subject's first change, one write for every change that arrived meanwhile (per subject and per
credentials: the proxy writes only with the credentials of someone who changed the subject),
retried while the registry is busy or failing. Otherwise attaches and deletes wait for it
(write-through) and see its failure: with keep tags off it is the only record that survives the
registry's GC, and with the embedded index the only one a restarted proxy reads.

The index is capped at `max_bytes` (the registry's manifest limit): referrers past it are listed
by the proxy alone, so an attach never fails because a subject has many.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Hashable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import orjson

from proxy.index import IndexStore, IndexUnavailable
from proxy.index.base import TagSync
from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, UpstreamRefused
from proxy.oci.manifest import IMAGE_INDEX, MAX_ANNOTATION_BYTES, Referrer
from proxy.oci.referrers import render_index
from proxy.oci.tagschema import Listing, TagIndex, copy_listing, missing_children, tag_name
from proxy.services.tag_reader import parse_tag_answer
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)
_Subject = tuple[str, str]  # repository, subject
_K = TypeVar("_K", bound=Hashable)
MAX_BEHIND = 4096  # subjects written behind at once; past it, attaches wait for their write
MAX_WRITING = 16  # writes behind running at once: the registry serves clients first
MAX_HELD_BYTES = 8 * 1024 * 1024  # descriptors pending writes hold (the index has them anyway)
RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 60.0, 60.0, 60.0)  # ~5 min, then give up
_READ_PAGE = 1000
_LOGGED_BODY = 300


@dataclass
class _Write:
    """One pending write of a subject's tag: changes arriving before it starts ride along.

    It holds the referrers attached for it, put back into the index before it renders: an index
    lost meanwhile (a Redis without persistence restarted) must not lose them from the copy.
    """

    repository: str
    subject: str
    auth: str | None  # of the latest client who changed the subject
    task: asyncio.Task[None] = field(init=False)
    added: dict[str, Referrer] = field(default_factory=dict)
    failing_since: float | None = None
    # The copy's entries were taken into the index: they are written even if unchanged, by
    # this write's retries too, until the registry has accepted (or refused) them.
    verify: bool = False

    @property
    def held(self) -> int:
        return sum(len(referrer.descriptor) for referrer in self.added.values())


class TagIndexWriter:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore,
        metrics: Metrics,
        *,
        behind: bool,
        delay: float = 1.0,
        max_bytes: int = 4 * 1024 * 1024,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
    ) -> None:
        self.client = client
        self.index = index
        self.metrics = metrics
        self.behind = behind
        self.delay = delay
        self.max_bytes = max_bytes
        self.max_annotation_bytes = max_annotation_bytes
        self._behind: dict[_Subject, _Write] = {}
        self._through: dict[tuple[str, str, str | None], _Write] = {}
        self._running: set[asyncio.Task[None]] = set()  # behind writes, pending or retrying
        self._now = asyncio.Event()  # set on close: no more waiting
        self._slots = asyncio.Semaphore(MAX_WRITING)
        self._held = 0
        # One write of a subject at a time in this process: the next waits here, not by polling
        # the shared lock.
        self._local: weakref.WeakValueDictionary[_Subject, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def changed(
        self, repository: str, subject: str, auth: str | None, added: Referrer | None = None
    ) -> None:
        """The subject's referrers changed in the index (`added` was attached, or one was
        deleted): bring its tag-schema index in step. Written behind when allowed and the
        backlog has room, once per subject whoever changed it (every write renders the whole
        index, so one per credentials would only repeat it), with the credentials of the latest
        client who did; else waited for, with the caller's, and a failure raised to it."""
        if self.behind and not self._now.is_set():
            pending = self._behind.get((repository, subject))
            if pending is None and len(self._behind) < MAX_BEHIND:
                pending = self._start_behind(_Write(repository, subject, auth))
            if pending is not None:
                pending.auth = auth
                self._hold(pending, added)
                return
            log.warning("%d tag-schema writes behind: this one is written through", MAX_BEHIND)
        key = (repository, subject, auth)
        write = self._through.get(key)
        if write is None:
            write = self._through[key] = _Write(repository, subject, auth)
            write.task = asyncio.create_task(self._write_through(key, write))
        self._hold(write, added)
        await asyncio.shield(write.task)

    def _hold(self, write: _Write, referrer: Referrer | None) -> None:
        if referrer is None or referrer.digest in write.added or self._held > MAX_HELD_BYTES:
            return
        write.added[referrer.digest] = referrer
        self._held += len(referrer.descriptor)

    def failing(self) -> int:
        """Subjects whose write is being retried after a failure (shown by /readyz)."""
        return sum(1 for write in self._behind.values() if write.failing_since is not None)

    async def close(self, grace: float) -> None:
        """Write what is behind now, waiting up to `grace` seconds; what is left is logged (the
        next change of each such subject writes it)."""
        self._now.set()
        if not self._running:
            return
        _, left = await asyncio.wait(set(self._running), timeout=grace)
        for task in left:
            task.cancel()
        if left:
            log.error("shutdown: %d tag-schema writes left unwritten", len(left))

    def _start_behind(self, write: _Write) -> _Write:
        self._behind[(write.repository, write.subject)] = write
        write.task = asyncio.create_task(self._write_behind(write))
        self._running.add(write.task)
        write.task.add_done_callback(self._running.discard)
        self.metrics.tag_writes_pending.set(len(self._behind))
        return write

    async def _write_through(self, key: tuple[str, str, str | None], write: _Write) -> None:
        try:
            await self._locked_write(write, lambda: self._close(self._through, key, write))
        finally:
            self._close(self._through, key, write)
            self._held -= write.held

    async def _write_behind(self, write: _Write) -> None:
        """Waits `delay` for more changes, then writes; retries while the failure is worth it.
        A change arriving while it retries rides along; a refusal or the last retry gives up."""
        key = (write.repository, write.subject)
        try:
            await self._pause(self.delay)
            for attempt, backoff in enumerate((*RETRY_SECONDS, None)):
                try:
                    await self._locked_write(
                        write, lambda: self._close(self._behind, key, write), self._slots
                    )
                    return
                except UpstreamRefused as exc:
                    if not exc.retryable:
                        self._give_up(write, "refused", exc)
                        return
                    failure: Exception = exc
                except BodyTooLarge as exc:  # an answer over the proxy's own limits
                    self._give_up(write, "refused", exc)
                    return
                except (IndexUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                    failure = exc
                if backoff is None or self._now.is_set():
                    self._give_up(write, "abandoned", failure)
                    return
                newer = self._behind.setdefault(key, write)
                if newer is not write:
                    # A newer write of the subject is pending: it renders the same.
                    for referrer in write.added.values():
                        self._hold(newer, referrer)
                    newer.verify |= write.verify
                    return
                if write.failing_since is None:
                    write.failing_since = time.monotonic()
                    self.metrics.tag_writes_failing.inc()
                self.metrics.tag_write("retried")
                log.warning(
                    "%s %s: tag-schema write failed (%s, attempt %d); retrying in %.0f s",
                    write.repository,
                    write.subject,
                    type(failure).__name__,
                    attempt + 1,
                    backoff,
                )
                await self._pause(backoff)
        finally:
            self._close(self._behind, key, write)
            self._held -= write.held
            if write.failing_since is not None:
                self.metrics.tag_writes_failing.dec()

    def _give_up(self, write: _Write, result: str, failure: Exception) -> None:
        self.metrics.tag_write(result)
        log.error(
            "%s %s: tag-schema index not written (%s: %s); the proxy lists the subject's"
            " referrers all the same, and its next change writes it",
            write.repository,
            write.subject,
            result,
            failure,
        )

    async def _pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._now.wait()

    async def _locked_write(
        self,
        write: _Write,
        close: Callable[[], None],
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        """One write of a subject at a time in this process (queued on a local lock, not by
        polling the shared one), then a slot if behind, then the subject's shared lock."""
        local = self._local.get((write.repository, write.subject))
        if local is None:
            local = self._local[(write.repository, write.subject)] = asyncio.Lock()
        async with (
            local,
            slots or nullcontext(),
            self.index.subject_lock(write.repository, write.subject),
        ):
            # From here on, a change needs a new write: this one may have read past it.
            close()
            await self._write(write)

    def _close(self, pending: dict[_K, _Write], key: _K, write: _Write) -> None:
        if pending.get(key) is write:
            del pending[key]
        self.metrics.tag_writes_pending.set(len(self._behind))

    async def _write(self, write: _Write) -> None:
        """Render the subject's tag-schema index from the index and write it if it differs
        from the registry's; delete the superseded one by digest so no garbage piles up."""
        repository, subject, auth = write.repository, write.subject, write.auth
        tag = tag_name(subject)
        answer = await self.client.get_manifest(repository, tag, auth)
        current: TagIndex | None = None
        if answer.status == 200:
            current = parse_tag_answer(repository, subject, tag, answer, self.max_annotation_bytes)
            if current is None:
                self.metrics.tag_write("refused")
                return  # never overwrite what is not ours to read
        elif answer.status != 404:
            raise UpstreamRefused(f"the read of tag {tag}", answer.status)
        copied = current.referrers if current is not None else []
        listed = [r.digest for r in copied]
        indexed = await self._indexed(repository, subject)
        held = {digest for digest, _ in indexed}
        # What the copy lists and the index lacks: written by someone else, or lost with the
        # index (even when the proxy wrote the copy: a wipe can land between its write and its
        # sync marker). Taken in, in the copy's order and before what this write carries,
        # except what the index refuses: what the proxy deleted (tombstoned) and what a push
        # recorded under another subject. The copy is rendered from what this write read and
        # took in, not from the index read again: a wipe landing in between would leave only
        # what the write recorded. A referrer deleted longer ago than its tombstone lasts is
        # taken in too, so a copy that took anything in is written even if unchanged: the
        # registry refuses an index listing a manifest it no longer has, and _put drops it.
        pushed = write.added  # what the write carries is described by its manifest itself
        missing = [pushed.get(r.digest, r) for r in copied if r.digest not in held]
        known = held.union(listed)
        fresh = [r for digest, r in pushed.items() if digest not in known]
        if missing or fresh:
            taken = await self.index.add_listed(repository, subject, [*missing, *fresh])
            missing = [r for r in missing if r.digest in taken]
            indexed += ((r.digest, r.descriptor) for r in (*missing, *fresh) if r.digest in taken)
        write.verify |= bool(missing)
        listing = copy_listing(listed, indexed, self.max_bytes)
        if listing.left_out:
            self.metrics.tag_index_left_out.inc(listing.left_out)
            log.warning(
                "%s:%s lists %d referrers, %d more would pass %d bytes: those are listed by the"
                " proxy alone",
                repository,
                tag,
                len(listing.digests),
                listing.left_out,
                self.max_bytes,
            )
        if listing.digests == listed and not write.verify:
            self.metrics.tag_write("unchanged")
            if current is not None:
                await self.index.set_tag_sync(
                    repository, subject, TagSync(current.digest, time.time())
                )
            return
        digest = await self._put(repository, tag, listing, auth)
        if current is not None and current.digest != digest:
            await self._delete_superseded(repository, tag, current.digest, auth)
        await self.index.set_tag_sync(repository, subject, TagSync(digest, time.time()))
        self.metrics.tag_write("written")
        log.info("%s:%s now lists %d referrers", repository, tag, len(listing.digests))

    async def _indexed(self, repository: str, subject: str) -> list[tuple[str, bytes]]:
        """Every referrer the index holds for the subject, in arrival order."""
        found: list[tuple[str, bytes]] = []
        after: int | None = 0
        while after is not None:
            page = await self.index.page(repository, subject, (), after, _READ_PAGE)
            found += ((orjson.loads(d)["digest"], d) for d in page.descriptors)
            after = page.next_after
        return found

    async def _put(self, repository: str, tag: str, listing: Listing, auth: str | None) -> str:
        """Write the index; its digest, or "" when nothing is left to list.

        A listed manifest deleted from the registry behind the proxy's back makes the registry
        refuse any index that lists it. Such children are dropped, from the index too, and the
        write retried: each retry lists fewer, so it ends.
        """
        kept = dict(zip(listing.digests, listing.descriptors, strict=True))
        while kept:
            body = render_index(kept.values())
            put = await self.client.put_manifest(repository, tag, body, IMAGE_INDEX, auth)
            if put.status == 201:
                return put.headers.get("Docker-Content-Digest", "")
            gone = missing_children(put.body) & kept.keys() if put.status == 400 else set()
            if not gone:
                log.error(
                    "%s:%s: upstream refused the tag-schema write (%d): %r",
                    repository,
                    tag,
                    put.status,
                    put.body[:_LOGGED_BODY],
                )
                raise UpstreamRefused(f"the write of tag {tag}", put.status)
            log.warning(
                "%s:%s listed %d manifests the registry no longer has; dropping them: %s",
                repository,
                tag,
                len(gone),
                ", ".join(sorted(gone)),
            )
            for digest in gone:
                await self.index.remove(repository, digest)
                del kept[digest]
        return ""

    async def _delete_superseded(
        self, repository: str, tag: str, digest: str, auth: str | None
    ) -> None:
        gone = await self.client.delete_manifest(repository, digest, auth)
        if gone.status not in (202, 404):
            log.warning(
                "%s: superseded %s index %s not deleted (%d)", repository, tag, digest, gone.status
            )
