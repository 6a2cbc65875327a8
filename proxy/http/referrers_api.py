"""The endpoints the proxy answers itself, or watches on their way through."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.http.forward import Forwarder
from proxy.http.headers import client_response_headers
from proxy.http.routing import repository_target
from proxy.index import IndexStore, IndexUnavailable, Page
from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, OCIError, UpstreamRefused
from proxy.oci.manifest import (
    IMAGE_INDEX,
    MAX_ANNOTATION_BYTES,
    ManifestInvalid,
    digest_algorithm,
    inspect_manifest,
)
from proxy.oci.names import is_digest, is_repository_name, stored_digest_error
from proxy.oci.referrers import (
    CURSOR_PARAM,
    CursorInvalid,
    bounded,
    decode_cursor,
    next_link,
    render_index,
)
from proxy.services.cascade import CASCADE_HEADER, Cascade
from proxy.services.keep_tags import KeepTags
from proxy.services.pull_access import PullAccess, PullRefused, proves_absent
from proxy.services.tag_reader import TagIndexReader
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import Answer, RegistryClient, read_capped
from proxy.upstream.native import ask_native, recorded_upstream
from proxy.upstream.session import describe_native, native_from_answer

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


def _index_answer(page: Page, name: str, subject: str, artifact_types: list[str]) -> web.Response:
    headers: dict[str, str] = {hdrs.CONTENT_TYPE: IMAGE_INDEX}
    if artifact_types:
        headers["OCI-Filters-Applied"] = "artifactType"
    if page.next_after is not None:
        headers[hdrs.LINK] = next_link(name, subject, artifact_types, page.next_after)
    return web.Response(body=render_index(page.descriptors), headers=headers)


class ReferrersApi:
    def __init__(
        self,
        forwarder: Forwarder,
        client: RegistryClient,
        index: IndexStore,
        reader: TagIndexReader,
        writer: TagIndexWriter | None,
        access: PullAccess,
        keep_tags: KeepTags,
        metrics: Metrics,
        *,
        max_manifest_bytes: int,
        page_size: int,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
        upstream_native: bool | None = False,
        body_timeout: float = 60.0,
        cascade: Cascade | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.client = client
        self.index = index
        self.reader = reader
        self.writer = writer  # None unless the proxy keeps the tag-schema indexes
        self.access = access
        self.keep_tags = keep_tags
        self.metrics = metrics
        self.max_manifest_bytes = max_manifest_bytes
        self.page_size = page_size
        self.max_annotation_bytes = max_annotation_bytes
        self.upstream_native = upstream_native
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
        if referrer is not None and not await self._native(name, referrer.subject, auth):
            keep = self.keep_tags.instead_of(reference, referrer)
        target = f"/v2/{name}/manifests/{keep}" if keep is not None else None
        answer = await self.forwarder.exchange(request, cap, body, target)
        if referrer is None or answer.status != 201:
            return self.forwarder.reply(request, answer)
        _confirmed_digest(answer, referrer.digest)
        if keep is not None:
            answer = _as_pushed(answer, keep, referrer.digest)
        if recorded_upstream(answer.headers, referrer.subject):
            self._settle(True)  # also an upgrade under a running proxy
        if self.upstream_native is True:
            # The upstream recorded it, and its OCI-Subject goes to the client as it came.
            log.info(
                "%s %s: recorded upstream as a referrer of %s", name, reference, referrer.subject
            )
            return self.forwarder.reply(request, answer)
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
            and not await self._native(name, subject, auth)
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
        # Only a caller the registry let delete the subject learns what its tree held.
        extra = {CASCADE_HEADER: cascaded.header()} if permitted else None
        return self.forwarder.reply(request, answer, extra)

    def _settle(self, native: bool | None) -> None:
        if native is not None and native != self.upstream_native:
            self.upstream_native = native
            log.info("upstream Referrers API: %s", describe_native(native))

    async def _native(self, name: str, subject: str, auth: str | None) -> bool:
        """Whether to leave the upstream's referrers to it (writing nothing of the proxy's
        there); while unknown, asked with the writer's credentials. Unproven is legacy."""
        if self.upstream_native is None:
            try:
                self._settle(await ask_native(self.client, name, subject, auth))
            except (aiohttp.ClientError, TimeoutError, OCIError) as exc:
                log.warning("%s %s: upstream Referrers API not settled: %r", name, subject, exc)
        return self.upstream_native is True

    async def _gone(self, name: str, digest: str, auth: str | None) -> bool:
        try:
            answer = await self.client.get_manifest(name, digest, auth)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge):
            return False
        return proves_absent(answer)

    async def _subject_of(self, name: str, digest: str, auth: str | None) -> str | None:
        """Which tag-schema index lists the manifest about to be deleted, read before it goes."""
        if self.writer is None or self.upstream_native is True:
            return None
        answer = await self.client.get_manifest(name, digest, auth)
        if answer.status != 200:
            return None
        try:
            found = inspect_manifest(answer.body, answer.headers.get(hdrs.CONTENT_TYPE, ""))
        except ManifestInvalid:
            return None
        return found.subject if found is not None else None

    async def get_referrers(self, request: web.Request) -> web.StreamResponse:
        """Every way to an answer (the index, the tag-schema read while the index is down, a
        native upstream's answer merged with the index, an upstream not yet known) passes the
        one pull check first."""
        name, subject = repository_target(request)
        if not is_repository_name(name) or stored_digest_error(subject):
            raise OCIError(400, "NAME_INVALID", "invalid repository name or digest")
        artifact_types = list(
            dict.fromkeys(t for t in request.query.getall("artifactType", []) if t)
        )
        try:
            visible = await self.access.may_pull(
                name, subject, request.headers.get(hdrs.AUTHORIZATION)
            )
        except PullRefused as refused:
            return self.forwarder.reply(request, refused.answer)
        if not visible:
            return _index_answer(Page([], None), name, subject, artifact_types)
        if self.upstream_native is not False:
            return await self._from_upstream(request, name, subject, artifact_types)
        return await self._from_index(request, name, subject, artifact_types)

    async def _from_index(
        self, request: web.Request, name: str, subject: str, artifact_types: list[str]
    ) -> web.Response:
        cursor = request.query.get(CURSOR_PARAM)
        try:
            after = decode_cursor(cursor) if cursor else 0
        except CursorInvalid as exc:
            raise OCIError(400, "UNSUPPORTED", str(exc)) from exc
        auth = request.headers.get(hdrs.AUTHORIZATION)
        try:
            if not cursor:
                await self.reader.refresh(name, subject, auth)
            page = await self.index.page(name, subject, artifact_types, after, self.page_size)
        except IndexUnavailable:
            self.reader.index_lost()
            listed = None if cursor else await self.reader.without_index(name, subject, auth)
            if listed is None:
                raise
            log.warning("index down: %s %s answered from the registry's tag index", name, subject)
            kept = [r for r in listed if not artifact_types or r.artifact_type in artifact_types]
            page = Page([r.descriptor for r in kept], None)
            self.metrics.served("tag_schema", len(page.descriptors))
        else:
            self.metrics.served("index", len(page.descriptors))
        return _index_answer(self._bounded(page), name, subject, artifact_types)

    def _bounded(self, page: Page) -> Page:
        """Descriptors stored before the annotation bound, or by another writer, cut to it."""
        kept = []
        for descriptor in page.descriptors:
            answered = bounded(descriptor, self.max_annotation_bytes)
            if answered is not descriptor:
                self.metrics.trimmed("stored")
            if answered is not None:
                kept.append(answered)
        return Page(kept, page.next_after)

    async def _from_upstream(
        self, request: web.Request, name: str, subject: str, artifact_types: list[str]
    ) -> web.StreamResponse:
        """The upstream's own answer, with the proxy's records of referrers it does not list
        (pushed before its upgrade) added to its first page. While it is not yet known whether
        the upstream has the API, its answer to this request decides. The upstream connection
        is given back before the index is asked, which may call the upstream again."""
        async with self.forwarder.open(request) as upstream:
            native = native_from_answer(upstream)
            self._settle(native)
            if upstream.status in (401, 403):
                return await self.forwarder.relay(request, upstream)
            body = (
                None
                if not native
                else await read_capped(
                    upstream.content,
                    upstream.content_length,
                    self.max_manifest_bytes,
                    "the upstream's referrers answer",
                )
            )
            headers = client_response_headers(
                upstream.headers, upstream=self.forwarder.upstream, public=request.url.origin()
            )
        if body is None:
            return await self._from_index(request, name, subject, artifact_types)
        try:
            listed = orjson.loads(body)["manifests"]
            digests = {descriptor["digest"] for descriptor in listed}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise OCIError(502, "UNAVAILABLE", "upstream referrers answer is not an index") from exc
        if artifact_types and "artifactType" not in headers.get("OCI-Filters-Applied", ""):
            listed = [d for d in listed if d.get("artifactType") in artifact_types]
        merged = [orjson.dumps(descriptor) for descriptor in listed]
        first_page = set(request.query) <= {"artifactType"}
        if first_page:
            own = self._bounded(
                await self.index.page(name, subject, artifact_types, 0, self.page_size)
            )
            merged += [d for d in own.descriptors if orjson.loads(d)["digest"] not in digests]
        self.metrics.served("upstream", len(merged))
        answer: dict[str, str] = {hdrs.CONTENT_TYPE: IMAGE_INDEX}
        if artifact_types:
            answer["OCI-Filters-Applied"] = "artifactType"
        if hdrs.LINK in headers:
            answer[hdrs.LINK] = headers[hdrs.LINK]
        return web.Response(body=render_index(merged), headers=answer)
