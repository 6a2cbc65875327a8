"""The endpoints the proxy answers itself, or watches on their way through."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from proxy.errors import OCIError
from proxy.forward import Forwarder
from proxy.index import IndexStore
from proxy.manifest import IMAGE_INDEX, ManifestInvalid, digest_algorithm, inspect_manifest
from proxy.names import digest_error, is_digest, is_repository_name
from proxy.referrers import CURSOR_PARAM, CursorInvalid, decode_cursor, next_link, render_index

log = logging.getLogger(__name__)


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `cap`."""
    too_large = OCIError(413, "MANIFEST_INVALID", f"manifest is larger than {cap} bytes")
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > cap:
            raise too_large
    return bytes(body)


def _confirmed_digest(upstream: aiohttp.ClientResponse, ours: str) -> None:
    """The upstream must have stored what we hashed, or the index would point at nothing."""
    theirs = upstream.headers.get("Docker-Content-Digest")
    if theirs and theirs.partition(":")[0] == ours.partition(":")[0] and theirs != ours:
        log.error("upstream stored digest %s but the proxy hashed %s: not recorded", theirs, ours)
        raise OCIError(502, "UNAVAILABLE", "upstream digest differs from the pushed bytes")


class ReferrersApi:
    def __init__(
        self, forwarder: Forwarder, index: IndexStore, *, max_manifest_bytes: int, page_size: int
    ) -> None:
        self.forwarder = forwarder
        self.index = index
        self.max_manifest_bytes = max_manifest_bytes
        self.page_size = page_size

    async def put_manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = request.match_info["name"], request.match_info["reference"]
        body = await read_capped(request, self.max_manifest_bytes)
        try:
            referrer = inspect_manifest(
                body, request.headers.get("Content-Type", ""), digest_algorithm(reference)
            )
        except ManifestInvalid as exc:
            raise OCIError(400, "MANIFEST_INVALID", str(exc)) from exc
        async with self.forwarder.open(request, body) as upstream:
            if referrer is None or upstream.status != 201:
                return await self.forwarder.relay(request, upstream)
            _confirmed_digest(upstream, referrer.digest)
            await self.index.add(name, referrer)
            log.info(
                "recorded %s in %s as a referrer of %s", referrer.digest, name, referrer.subject
            )
            return await self.forwarder.relay(request, upstream, {"OCI-Subject": referrer.subject})

    async def delete_manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = request.match_info["name"], request.match_info["reference"]
        async with self.forwarder.open(request) as upstream:
            # 404: already gone upstream (perhaps an earlier attempt whose index update failed).
            if is_digest(reference) and upstream.status in (202, 404):
                await self.index.remove(name, reference)
            return await self.forwarder.relay(request, upstream)

    async def get_referrers(self, request: web.Request) -> web.Response:
        name, subject = request.match_info["name"], request.match_info["digest"]
        if not is_repository_name(name):
            raise OCIError(400, "NAME_INVALID", f"invalid repository name {name!r}")
        problem = digest_error(subject)
        if problem:
            raise OCIError(400, "DIGEST_INVALID", problem)
        artifact_types = list(
            dict.fromkeys(t for t in request.query.getall("artifactType", []) if t)
        )
        cursor = request.query.get(CURSOR_PARAM)
        try:
            after = decode_cursor(cursor) if cursor else 0
        except CursorInvalid as exc:
            raise OCIError(400, "UNSUPPORTED", str(exc)) from exc
        page = await self.index.page(name, subject, artifact_types, after, self.page_size)
        headers = {"Content-Type": IMAGE_INDEX}
        if artifact_types:
            headers["OCI-Filters-Applied"] = "artifactType"
        if page.next_after is not None:
            headers["Link"] = next_link(name, subject, artifact_types, page.next_after)
        return web.Response(body=render_index(page.descriptors), headers=headers)
