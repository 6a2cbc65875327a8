"""Each referrer manifest tagged under a hidden name, so the registry's garbage collector keeps
it: Distribution 2.8's `garbage-collect --delete-untagged` deletes every untagged manifest, even
one a tagged tag-schema index lists (it marks an index's children as blobs only). Deleting the
referrer by digest removes the tag with it. Off for registries whose GC keeps index children."""

from __future__ import annotations

import logging

from proxy.oci.errors import UpstreamRefused
from proxy.oci.manifest import Referrer
from proxy.oci.tagschema import keep_tag
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)


class KeepTags:
    def __init__(self, client: RegistryClient, enabled: bool) -> None:
        self.client = client
        self.enabled = enabled

    def instead_of(self, reference: str, referrer: Referrer) -> str | None:
        """The keep tag to PUT a referrer to instead of `reference`, when that is the same write
        made once: a PUT by its own digest stores the same bytes under the same digest as a PUT
        by its keep tag, which also tags it (Distribution 2.8 answers both with the same Location
        and Docker-Content-Digest, pinned in test_keep_tags.py). A PUT by any other reference
        (a tag of the client's, a digest the bytes do not have) goes as the client sent it."""
        if not self.enabled or reference != referrer.digest:
            return None
        return keep_tag(referrer.digest)

    async def keep(
        self, repository: str, referrer: Referrer, body: bytes, media_type: str, auth: str | None
    ) -> None:
        """Tag the referrer just pushed (the same bytes, so the same digest), with the pusher's
        credentials. An attach is answered 201 only once this holds: until then GC may take it."""
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
            raise UpstreamRefused(f"the keep tag of {referrer.digest}", put.status)
