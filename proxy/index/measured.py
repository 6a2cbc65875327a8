"""Any IndexStore, counted: operations and failures go to the metrics, the rest is delegated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager

from proxy.index.base import IndexStore, Page, TagSync
from proxy.metrics import Metrics, error_label
from proxy.oci.manifest import Referrer


class MeasuredIndex:
    def __init__(self, store: IndexStore, metrics: Metrics) -> None:
        self.store = store
        self._operations = metrics.index_operations
        self._errors = metrics.index_errors

    @asynccontextmanager
    async def _measure(self, operation: str) -> AsyncIterator[None]:
        self._operations.labels(operation).inc()
        try:
            yield
        except Exception as exc:
            self._errors.labels(operation, error_label(exc)).inc()
            raise

    async def add(self, repository: str, referrer: Referrer) -> None:
        async with self._measure("add"):
            await self.store.add(repository, referrer)

    async def add_listed(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> set[str]:
        async with self._measure("add_listed"):
            return await self.store.add_listed(repository, subject, referrers)

    async def remove(self, repository: str, digest: str) -> None:
        async with self._measure("remove"):
            await self.store.remove(repository, digest)

    async def tombstoned(self, repository: str, subject: str, digest: str) -> bool:
        async with self._measure("tombstoned"):
            return await self.store.tombstoned(repository, subject, digest)

    async def page(
        self,
        repository: str,
        subject: str,
        artifact_types: Collection[str],
        after: int,
        limit: int,
    ) -> Page:
        async with self._measure("page"):
            return await self.store.page(repository, subject, artifact_types, after, limit)

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None:
        async with self._measure("tag_sync"):
            return await self.store.tag_sync(repository, subject)

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        async with self._measure("set_tag_sync"):
            await self.store.set_tag_sync(repository, subject, sync)

    @asynccontextmanager
    async def subject_lock(self, repository: str, subject: str) -> AsyncIterator[None]:
        """Counts taking and releasing the lock; what fails while it is held counts as its
        own operation."""
        self._operations.labels("lock").inc()
        held = False
        try:
            async with self.store.subject_lock(repository, subject):
                held = True
                yield
                held = False
        except Exception as exc:
            if not held:
                self._errors.labels("lock", error_label(exc)).inc()
            raise

    async def ping(self) -> None:
        async with self._measure("ping"):
            await self.store.ping()

    async def close(self) -> None:
        await self.store.close()
