"""Registry notifications applied to the index in the background: what was pushed or deleted
straight at the registry, bypassing the proxy, is seen all the same.

The endpoint only authenticates, parses and enqueues (Distribution blocks its queue per
endpoint until a delivery is acknowledged, so it must answer fast); one worker applies the
events in arrival order. A push is applied the way a PUT through the proxy is, minus the PUT:
the manifest is read back from the registry (so only what the registry holds is indexed, with
the digest of its bytes), its keep tag written when it was pushed by digest, its descriptor
recorded, its subject's tag-schema index brought in step; a registry with the Referrers API
lists it itself, and gets nothing written. A delete forgets the referrer (and
the cached manifest). Both are idempotent: a repeated or late push finds the manifest gone, or
records it again; a repeated delete forgets nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from proxy.index import IndexStore, IndexUnavailable
from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, UpstreamRefused
from proxy.oci.manifest import ManifestInvalid, digest_algorithm, inspect_manifest
from proxy.oci.notifications import Deleted, Event, Pushed
from proxy.services.keep_tags import KeepTags
from proxy.services.pull_access import proves_absent
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import RegistryClient
from proxy.upstream.native import NativeSupport

log = logging.getLogger(__name__)
QUEUE_CAPACITY = 10_000  # events; past it the endpoint answers 503 and Distribution retries
_FAILURES = (UpstreamRefused, BodyTooLarge, IndexUnavailable, aiohttp.ClientError, TimeoutError)

Forget = Callable[[str, str], Awaitable[None]]


class EventIndexer:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore,
        writer: TagIndexWriter | None,
        keep_tags: KeepTags,
        native: NativeSupport,
        metrics: Metrics,
        *,
        auth: str | None,
        forget: Forget,
        max_annotation_bytes: int,
        capacity: int = QUEUE_CAPACITY,
    ) -> None:
        self.client = client
        self.index = index
        self.writer = writer
        self.keep_tags = keep_tags
        self.native = native
        self.metrics = metrics
        self.auth = auth  # --notifications-credentials-file: for these calls only
        self.forget = forget
        self.max_annotation_bytes = max_annotation_bytes
        self._queue: asyncio.Queue[tuple[float, Event]] = asyncio.Queue(capacity)
        self._worker: asyncio.Task[None] | None = None

    def offer(self, events: list[Event]) -> bool:
        """Enqueue all of `events`, or none when they do not fit."""
        if self._queue.maxsize - self._queue.qsize() < len(events):
            return False
        now = time.monotonic()
        for event in events:
            self._queue.put_nowait((now, event))
        self.metrics.notifications_queued.set(self._queue.qsize())
        return True

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run())

    async def close(self, grace: float) -> None:
        """Apply what is queued, waiting up to `grace` seconds; what is left is logged (a
        `reindex` finds it)."""
        if self._worker is None:
            return
        try:
            async with asyncio.timeout(grace):
                await self._queue.join()
        except TimeoutError:
            log.error("shutdown: %d registry events left unapplied", self._queue.qsize())
        self._worker.cancel()

    async def _run(self) -> None:
        while True:
            queued_at, event = await self._queue.get()
            try:
                result = await self.apply(event)
            except _FAILURES as exc:
                result = "failed"
                log.error("registry event %s not applied: %r", event, exc)
            except Exception:  # a bug: the worker must outlive it, or the queue only fills
                result = "failed"
                log.exception("registry event %s not applied", event)
            finally:
                self._queue.task_done()
                self.metrics.notifications_queued.set(self._queue.qsize())
            self.metrics.notification_applied(result, time.monotonic() - queued_at)

    async def apply(self, event: Event) -> str:
        """`indexed`, `forgotten` or `ignored`; raises what failed."""
        if isinstance(event, Deleted):
            # Applied from what the registry holds now: a late or repeated delete of a manifest
            # pushed again since forgets nothing.
            answer = await self.client.get_manifest(event.repository, event.digest, self.auth)
            if not proves_absent(answer):
                log.info("registry event: %s delete of a manifest still there", event.digest)
                return "ignored"
            await self.index.remove(event.repository, event.digest)
            await self.forget(event.repository, event.digest)
            log.info("registry event: %s deleted from %s", event.digest, event.repository)
            return "forgotten"
        return await self._pushed(event)

    async def _pushed(self, event: Pushed) -> str:
        name = event.repository
        answer = await self.client.get_manifest(name, event.digest, self.auth)
        if proves_absent(answer):
            return "ignored"  # deleted since: a late or repeated event
        if answer.status != 200:
            raise UpstreamRefused(f"read of pushed {name}@{event.digest}", answer.status)
        content_type = answer.headers.get("Content-Type", "")
        try:
            referrer = inspect_manifest(
                answer.body,
                content_type,
                digest_algorithm(event.digest),
                self.max_annotation_bytes,
            )
        except ManifestInvalid as exc:
            log.warning("registry event: %s@%s has a bad subject: %s", name, event.digest, exc)
            return "ignored"
        if referrer is None:
            return "ignored"
        if referrer.digest != event.digest:
            raise UpstreamRefused(f"{name}@{event.digest}: other bytes read back", 502)
        native = await self.native.proven(name, referrer.subject, self.auth)
        if native:
            log.info("registry event: %s in %s listed by the registry itself", event.digest, name)
            return "ignored"
        if native is None:
            # No PUT answer settles it here: writing the legacy way could clutter a native
            # registry's tags. The pusher, which got no OCI-Subject, keeps its own tag-schema
            # index; `reindex` adds the keep tag once the kind is proven.
            await self.index.add(name, referrer)
            log.warning(
                "registry event: %s in %s indexed; nothing written to the registry while its"
                " Referrers API is unproven",
                event.digest,
                name,
            )
            return "indexed"
        if event.tag is None and self.keep_tags.enabled:
            # A refused keep tag is logged; the referrer is pushed all the same: index it
            # (`reindex` adds the keep tag later).
            with contextlib.suppress(UpstreamRefused):
                await self.keep_tags.keep(name, referrer, answer.body, content_type, self.auth)
        await self.index.add(name, referrer)
        if self.writer is not None:
            try:
                await self.writer.changed(name, referrer.subject, self.auth, referrer)
            except _FAILURES as exc:  # indexed; the subject's next write brings it in step
                log.error("%s %s: tag-schema index not updated: %r", name, referrer.subject, exc)
        log.info(
            "registry event: recorded %s in %s as a referrer of %s",
            referrer.digest,
            name,
            referrer.subject,
        )
        return "indexed"
