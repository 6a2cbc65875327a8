"""Whether a write goes in front of an upstream that has the Referrers API itself.

A native upstream records each referrer on the manifest PUT and answers `OCI-Subject`: the
proxy then writes nothing of its own there (no tag-schema index, no keep tag, no superseded
index delete), which would only clutter the tag namespace the API exists to keep clean. Only an
answer proves the kind: the start-up probe, a referrers answer to real credentials, or a PUT
answered with `OCI-Subject` (the spec's word for "recorded"). While none has, a write asks the
upstream once with the writer's credentials; if that proves nothing either, a client's write is
made the legacy way, which loses no referrer, and a registry event's is not made at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs

from proxy.oci.errors import BodyTooLarge
from proxy.oci.manifest import IMAGE_INDEX, media_type
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)
ZERO_DIGEST = "sha256:" + "0" * 64  # a subject no registry holds: the probes' question


def native_from_status(status: int, content_type: str | None) -> bool | None:
    """A 200 image index says yes and a router's 404 (no such route: not JSON) says no; a
    404 with an OCI error body (NAME_UNKNOWN: a native registry asked about a repository it
    does not hold), a challenge, an error or anything else says nothing (clients compare the
    Content-Type to the letter; so does the proxy)."""
    kind = media_type(content_type or "")
    if status == 200 and kind == IMAGE_INDEX:
        return True
    if status == 404 and kind != "application/json":
        return False
    return None


def recorded_upstream(headers: Mapping[str, str], subject: str) -> bool:
    """The PUT answer says the upstream recorded the referrer of `subject` itself."""
    return headers.get("OCI-Subject") == subject


async def ask_native(
    client: RegistryClient, repository: str, subject: str, auth: str | None
) -> bool | None:
    """The upstream's referrers answer for `subject`, judged, with the writer's credentials."""
    answer = await client.call(
        "GET",
        f"/v2/{repository}/referrers/{subject}",
        auth=auth,
        headers={hdrs.ACCEPT: IMAGE_INDEX},
    )
    return native_from_status(answer.status, answer.headers.get(hdrs.CONTENT_TYPE))


def describe_native(native: bool | None) -> str:
    if native is None:
        return "unknown until an authorized referrers request or write"
    if native:
        return "native, its answers are merged and the proxy writes nothing there"
    return "absent, the proxy's index answers"


class NativeSupport:
    """What is known of the upstream's Referrers API, shared by the writes and the reads of one
    app: None until an answer proves it either way, then settled (again, if the registry is
    upgraded under a running proxy)."""

    def __init__(self, client: RegistryClient, known: bool | None) -> None:
        self.client = client
        self.known = known

    def settle(self, native: bool | None) -> None:
        """Once proven native, native it stays for this process: referrers recorded upstream
        alone must not vanish from listings because one answer (a router's 404 during a rolling
        upgrade) said otherwise. A registry rolled back needs a restart of the proxy."""
        if native is None or native == self.known:
            return
        if self.known is True:
            log.warning("upstream Referrers API: an answer said absent; still treated as native")
            return
        self.known = native
        log.info("upstream Referrers API: %s", describe_native(native))

    async def proven(self, repository: str, subject: str, auth: str | None) -> bool | None:
        """What is known; while unknown, asked with the writer's credentials."""
        if self.known is None:
            try:
                self.settle(await ask_native(self.client, repository, subject, auth))
            except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
                log.warning(
                    "%s %s: upstream Referrers API not settled: %r", repository, subject, exc
                )
        return self.known

    async def for_write(self, repository: str, subject: str, auth: str | None) -> bool:
        """Whether a client's write leaves the upstream's referrers to it (the proxy writing
        nothing of its own there). Unproven is legacy: the PUT's answer settles it, and a
        legacy write loses no referrer."""
        return await self.proven(repository, subject, auth) is True
