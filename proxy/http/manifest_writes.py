"""Manifest PUTs and DELETEs, watched on their way through: a referrer is recorded (index, keep
tag, tag-schema copy) once the registry holds it, and forgotten once it is gone."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.http.forward import Forwarder
from proxy.http.routing import repository_target
from proxy.index import IndexStore, IndexUnavailable
from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, OCIError, UpstreamRefused
from proxy.oci.manifest import (
    MAX_ANNOTATION_BYTES,
    ManifestInvalid,
    digest_algorithm,
    inspect_manifest,
)
from proxy.oci.names import is_digest
from proxy.services.cascade import CASCADE_HEADER, Cascade
from proxy.services.keep_tags import KeepTags
from proxy.services.pull_access import proves_absent
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import Answer, RegistryClient, read_capped
from proxy.upstream.native import NativeSupport, recorded_upstream

log = logging.getLogger(__name__)


def _confirmed_digest(answer: Answer, ours: str) -> None:
    """The upstream must have stored what we hashed, or the index would point at nothing."""
    theirs = answer.headers.get("Docker-Content-Digest")
    if theirs and theirs.partition(":")[0] == ours.partition(":")[0] and theirs != ours:
        log.error("upstream stored digest %s but the proxy hashed %s: not recorded", theirs, ours)
        raise OCIError(502, "UNAVAILABLE", "upstream digest differs from the pushed bytes")


def _as_pushed(answer: Answer, keep: str, digest: str) -> Answer:
    """The answer to a PUT by digest made as a PUT by the keep tag: a registry that names the
    manifest by the tag it was put to would show the client the hidden tag."""
    location = answer.headers.get(hdrs.LOCATION, "")
    if keep not in location:
        return answer
    headers = CIMultiDict(answer.headers)
    headers[hdrs.LOCATION] = location.replace(keep, digest)
    return Answer(answer.status, CIMultiDictProxy(headers), answer.body)


class ManifestWrites:
    def __init__(
        self,
        forwarder: Forwarder,
        client: RegistryClient,
        index: IndexStore,
        writer: TagIndexWriter | None,
        keep_tags: KeepTags,
        native: NativeSupport,
        metrics: Metrics,
        *,
        max_manifest_bytes: int,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
        body_timeout: float = 60.0,
        cascade: Cascade | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.client = client
        self.index = index
        self.writer = writer  # None unless the proxy keeps the tag-schema indexes
        self.keep_tags = keep_tags
        self.native = native
        self.metrics = metrics
        self.max_manifest_bytes = max_manifest_bytes
        self.max_annotation_bytes = max_annotation_bytes
        self.body_timeout = body_timeout
        self.cascade = cascade  # --cascade-delete

    async def put_manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = repository_target(request)
        cap = self.max_manifest_bytes
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await read_capped(
                    request.content,
                    request.content_length,
                    cap,
                    "the manifest",
                    from_client=True,
                )
        except TimeoutError as exc:
            raise OCIError(408, "UNSUPPORTED", "manifest body not received in time") from exc
        try:
            referrer = inspect_manifest(
                body,
                request.headers.get(hdrs.CONTENT_TYPE, ""),
                digest_algorithm(reference),
                self.max_annotation_bytes,
            )
        except ManifestInvalid as exc:
            raise OCIError(400, "MANIFEST_INVALID", str(exc)) from exc
        if referrer is not None and referrer.trimmed:
            log.warning(
                "%s %s: annotations over %d bytes left out of its descriptor",
                name,
                reference,
                self.max_annotation_bytes,
            )
            self.metrics.trimmed("put")
        auth = request.headers.get(hdrs.AUTHORIZATION)
        keep = None
        if referrer is not None and not await self.native.for_write(name, referrer.subject, auth):
            keep = self.keep_tags.instead_of(reference, referrer)
        target = f"/v2/{name}/manifests/{keep}" if keep is not None else None
        answer = await self.forwarder.exchange(request, cap, body, target)
        if referrer is None or answer.status != 201:
            return self.forwarder.reply(request, answer)
        _confirmed_digest(answer, referrer.digest)
        if keep is not None:
            answer = _as_pushed(answer, keep, referrer.digest)
        if recorded_upstream(answer.headers, referrer.subject):
            self.native.settle(True)  # also an upgrade under a running proxy
            # The upstream recorded it, and its OCI-Subject goes to the client as it came.
            log.info(
                "%s %s: recorded upstream as a referrer of %s", name, reference, referrer.subject
            )
            return self.forwarder.reply(request, answer)
        # Not recorded upstream (no OCI-Subject, even from a native registry: the spec's word
        # for "fall back"): the proxy records it the legacy way.
        if keep is None and self.keep_tags.enabled:
            await self.keep_tags.keep(
                name, referrer, body, request.headers.get(hdrs.CONTENT_TYPE, ""), auth
            )
        await self.index.add(name, referrer)
        if self.writer is not None:
            await self.writer.changed(name, referrer.subject, auth, referrer)
        log.info("recorded %s in %s as a referrer of %s", referrer.digest, name, referrer.subject)
        return self.forwarder.reply(request, answer, {"OCI-Subject": referrer.subject})

    async def delete_manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = repository_target(request)
        if not is_digest(reference):
            return await self.forwarder.handle(request)
        auth = request.headers.get(hdrs.AUTHORIZATION)
        subject = await self._subject_of(name, reference, auth)
        cascaded = None
        if self.cascade is not None:
            cascaded = await self.cascade.delete_referrers(name, reference, auth)
        answer = await self.forwarder.exchange(request, self.max_manifest_bytes)
        # A MANIFEST_UNKNOWN 404: already gone upstream (perhaps an earlier attempt whose index
        # update failed). Any other 404 (a router's, an ingress's) proves nothing.
        deleted = answer.status == 202
        if answer.status >= 500 and await self._gone(name, reference, auth):
            # Distribution 2.8 deletes the manifest, then scans every tag's link to untag it,
            # and answers 500 when one is being rewritten at that moment (soak-measured). The
            # client gets that answer; the index must still follow the registry.
            log.warning(
                "%s %s: upstream answered %d to a delete that took effect; recording it",
                name,
                reference,
                answer.status,
            )
            deleted = True
        if deleted or proves_absent(answer):
            await self.index.remove(name, reference)
        if (
            deleted
            and subject is not None
            and self.writer is not None
            and not await self.native.for_write(name, subject, auth)
        ):
            try:
                await self.writer.changed(name, subject, auth)
            except (
                UpstreamRefused,
                BodyTooLarge,
                IndexUnavailable,
                aiohttp.ClientError,
                TimeoutError,
            ) as exc:
                # The registry deleted it: that is the answer. A retry would find it gone and
                # change nothing; the tag-schema index drops it at its next write.
                log.error("%s %s: deleted, tag-schema index not updated: %r", name, subject, exc)
        if self.cascade is None or cascaded is None:
            return self.forwarder.reply(request, answer)
        self.cascade.report(name, reference, cascaded, answer.status)
        permitted = deleted or proves_absent(answer)
        # A subject deleted, or left without referrers, has no tag-schema index to keep.
        gone = cascaded.emptied | {reference} if permitted else set()
        await self.cascade.drop_tag_indexes(name, gone, auth)
        # Only a caller the registry let delete the subject, or who deleted referrers with its
        # own credentials (then told, even when the subject's delete failed), learns the counts.
        extra = {CASCADE_HEADER: cascaded.header()} if permitted or cascaded.deleted else None
        return self.forwarder.reply(request, answer, extra)

    async def _gone(self, name: str, digest: str, auth: str | None) -> bool:
        try:
            answer = await self.client.get_manifest(name, digest, auth)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge):
            return False
        return proves_absent(answer)

    async def _subject_of(self, name: str, digest: str, auth: str | None) -> str | None:
        """Which tag-schema index lists the manifest about to be deleted, read before it goes."""
        if self.writer is None or self.native.known is True:
            return None
        answer = await self.client.get_manifest(name, digest, auth)
        if answer.status != 200:
            return None
        try:
            found = inspect_manifest(answer.body, answer.headers.get(hdrs.CONTENT_TYPE, ""))
        except ManifestInvalid:
            return None
        return found.subject if found is not None else None
