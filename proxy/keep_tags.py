"""Each referrer manifest tagged under a hidden name, so the registry's garbage collector keeps
it: Distribution 2.8's `garbage-collect --delete-untagged` deletes every untagged manifest, even
one a tagged tag-schema index lists (it marks an index's children as blobs only). Deleting the
referrer by digest removes the tag with it. Off for registries whose GC keeps index children."""

from __future__ import annotations

import logging

from proxy.errors import OCIError
from proxy.manifest import Referrer
from proxy.registry_client import RegistryClient
from proxy.tagschema import keep_tag

log = logging.getLogger(__name__)


class KeepTags:
    def __init__(self, client: RegistryClient, enabled: bool) -> None:
        self.client = client
        self.enabled = enabled

    async def keep(
        self, repository: str, referrer: Referrer, body: bytes, media_type: str, auth: str | None
    ) -> None:
        """Tag the referrer just pushed (the same bytes, so the same digest), with the pusher's
        credentials. An attach is answered 201 only once this holds: until then GC may take it."""
        if not self.enabled:
            return
        tag = keep_tag(referrer.digest)
        put = await self.client.put_manifest(repository, tag, body, media_type, auth)
        if put.status != 201:
            log.error(
                "%s: keep tag %s for %s refused (%d): %r",
                repository,
                tag,
                referrer.digest,
                put.status,
                put.body[:300],
            )
            raise OCIError(
                502, "UNAVAILABLE", f"upstream refused the keep tag of {referrer.digest}; retry"
            )
