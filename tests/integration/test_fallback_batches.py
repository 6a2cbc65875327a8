"""Tag-schema writes must not outlive a failure: the next change gets a fresh write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import pytest
from yarl import URL

from proxy.devstack.oci_client import (
    MANIFEST,
    artifact_manifest,
    push_manifest,
    push_subject_image,
    read_tag_index,
    sha256,
)
from proxy.devstack.processes import Registry
from proxy.index import EmbeddedIndex, IndexUnavailable
from proxy.metrics import Metrics
from proxy.oci.manifest import inspect_manifest
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import RegistryClient


class LockFailsOnce(EmbeddedIndex):
    """Injects the fault seen in the soak: the subject lock cannot be taken, once."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def subject_lock(self, repository: str, subject: str) -> AbstractAsyncContextManager[None]:
        if self.failures:
            self.failures -= 1
            return self._broken()
        return super().subject_lock(repository, subject)

    @asynccontextmanager
    async def _broken(self) -> AsyncIterator[None]:
        raise IndexUnavailable("lock failed: Too many connections")
        yield


async def test_a_failed_write_does_not_poison_the_subject(
    http: aiohttp.ClientSession, registry: Registry, repo: str
) -> None:
    image = await push_subject_image(http, registry.url, repo)
    first, second = artifact_manifest(image, annotations={"n": "1"}), artifact_manifest(image)
    for manifest in (first, second):
        assert (await push_manifest(http, registry.url, repo, manifest)).status == 201
    index = LockFailsOnce()
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, URL(registry.url), 4 * 1024 * 1024)
        writer = TagIndexWriter(client, index, Metrics.create(), behind=False)
        referrers = [inspect_manifest(m, MANIFEST) for m in (first, second)]
        assert referrers[0] is not None
        assert referrers[1] is not None
        await index.add(repo, referrers[0])
        with pytest.raises(IndexUnavailable):
            await writer.changed(repo, sha256(image), None)
        await index.add(repo, referrers[1])
        await writer.changed(repo, sha256(image), None)
    _, listed, _ = await read_tag_index(http, registry.url, repo, image)
    assert [d["digest"] for d in listed] == [r.digest for r in referrers]
