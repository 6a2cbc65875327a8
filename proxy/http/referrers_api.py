"""GET /v2/<name>/referrers/<digest>, answered by the proxy: from its index (refreshed from the
tag schema), from the tag schema while the index is down, or merged with a native upstream's
answer; always behind the one pull check."""

from __future__ import annotations

import logging

import orjson
from aiohttp import hdrs, web

from proxy.http.forward import Forwarder
from proxy.http.headers import client_response_headers
from proxy.http.routing import repository_target
from proxy.index import IndexStore, IndexUnavailable, Page
from proxy.metrics import Metrics
from proxy.oci.errors import OCIError
from proxy.oci.manifest import (
    IMAGE_INDEX,
    MAX_ANNOTATION_BYTES,
)
from proxy.oci.referrers import (
    CURSOR_PARAM,
    CursorInvalid,
    bounded,
    decode_cursor,
    next_link,
    render_index,
)
from proxy.services.pull_access import PullAccess, PullRefused
from proxy.services.tag_reader import TagIndexReader
from proxy.upstream.client import read_capped
from proxy.upstream.native import NativeSupport
from proxy.upstream.session import native_from_answer

log = logging.getLogger(__name__)


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
        index: IndexStore,
        reader: TagIndexReader,
        access: PullAccess,
        native: NativeSupport,
        metrics: Metrics,
        *,
        max_manifest_bytes: int,
        page_size: int,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
    ) -> None:
        self.forwarder = forwarder
        self.index = index
        self.reader = reader
        self.access = access
        self.native = native
        self.metrics = metrics
        self.max_manifest_bytes = max_manifest_bytes
        self.page_size = page_size
        self.max_annotation_bytes = max_annotation_bytes

    async def get_referrers(self, request: web.Request) -> web.StreamResponse:
        """Every way to an answer (the index, the tag-schema read while the index is down, a
        native upstream's answer merged with the index, an upstream not yet known) passes the
        one pull check first."""
        name, subject = repository_target(request)  # checked by routing.target_middleware
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
        if self.native.known is not False:
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
            self.native.settle(native)
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
