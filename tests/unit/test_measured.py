from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.devstack.oci_client import MANIFEST, artifact_manifest
from proxy.index import EmbeddedIndex, IndexUnavailable
from proxy.index.measured import MeasuredIndex
from proxy.metrics import Metrics
from proxy.oci.manifest import Referrer, inspect_manifest

SUBJECT = b'{"schemaVersion":2}'


class Broken(EmbeddedIndex):
    """Adds and locks fail the way the Redis store fails when Redis is gone."""

    async def add(self, repository: str, referrer: Referrer) -> None:
        raise IndexUnavailable("index add failed") from RedisConnectionError("Error 111")

    def subject_lock(self, repository: str, subject: str) -> AbstractAsyncContextManager[None]:
        return self._no_lock()

    @asynccontextmanager
    async def _no_lock(self) -> AsyncIterator[None]:
        raise IndexUnavailable("index lock failed") from RedisConnectionError("Error 111")
        yield


def _ops(metrics: Metrics, operation: str) -> float | None:
    return metrics.registry.get_sample_value(
        "referrers_proxy_index_operations_total", {"operation": operation}
    )


def _errors(metrics: Metrics, operation: str, error: str) -> float | None:
    return metrics.registry.get_sample_value(
        "referrers_proxy_index_errors_total", {"operation": operation, "error": error}
    )


async def test_operations_are_counted_and_delegated() -> None:
    metrics = Metrics.create()
    index = MeasuredIndex(EmbeddedIndex(), metrics)
    referrer = inspect_manifest(artifact_manifest(SUBJECT), MANIFEST)
    assert referrer is not None
    await index.add("a", referrer)
    await index.add("a", referrer)
    page = await index.page("a", referrer.subject, [], 0, 10)
    assert page.descriptors == [referrer.descriptor]
    await index.remove("a", referrer.digest)
    async with index.subject_lock("a", referrer.subject):
        pass
    await index.ping()
    assert (_ops(metrics, "add"), _ops(metrics, "page"), _ops(metrics, "remove")) == (2, 1, 1)
    assert (_ops(metrics, "lock"), _ops(metrics, "ping")) == (1, 1)
    assert _errors(metrics, "add", "ConnectionError") is None


async def test_failures_are_counted_by_cause_and_still_raised() -> None:
    metrics = Metrics.create()
    index = MeasuredIndex(Broken(), metrics)
    referrer = inspect_manifest(artifact_manifest(SUBJECT), MANIFEST)
    assert referrer is not None
    for _ in range(2):
        with pytest.raises(IndexUnavailable):
            await index.add("a", referrer)
    with pytest.raises(IndexUnavailable):
        async with index.subject_lock("a", referrer.subject):
            pass
    assert _errors(metrics, "add", "ConnectionError") == 2
    assert _errors(metrics, "lock", "ConnectionError") == 1


async def test_a_failure_while_the_lock_is_held_is_not_a_lock_error() -> None:
    metrics = Metrics.create()
    index = MeasuredIndex(EmbeddedIndex(), metrics)
    with pytest.raises(ValueError, match="tag write"):
        async with index.subject_lock("a", "sha256:" + "0" * 64):
            raise ValueError("tag write failed")
    assert _ops(metrics, "lock") == 1
    assert _errors(metrics, "lock", "other") is None
