"""`GET`/`HEAD /v2/<name>/manifests/<digest>` answered from the manifest cache.

Default-deny: the cache answers a caller only while the proxy remembers a grant of that caller's
pull permission for that repository (`PullAccess.known`: a pull check, or the upstream's 200 to
the caller's own manifest request, within `--auth-cache-seconds`). Without one, the request goes
upstream like any other, and only the upstream's 200 both grants and fills the cache; a 401,
403, 429, 5xx, timeout or reset grants nothing and keeps nothing. A kept body is the upstream's
bytes, checked against the digest before it is kept; the answer repeats the upstream's headers
(`Content-Type`, `Docker-Content-Digest`, `Content-Length`, `ETag`, ...) with a fresh `Date`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.http.forward import Forwarder
from proxy.http.headers import client_response_headers
from proxy.http.routing import repository_target
from proxy.metrics import FROM_UPSTREAM
from proxy.oci.cache_rules import MAX_ENTRY_BYTES, accepts, answerable, keepable, kept_headers
from proxy.oci.manifest import compute_digest, digest_algorithm
from proxy.oci.names import is_digest
from proxy.services.manifest_cache import CacheUnavailable, ManifestCache
from proxy.services.pull_access import PullAccess
from proxy.upstream.client import read_capped

log = logging.getLogger(__name__)


class CachedManifests:
    def __init__(self, forwarder: Forwarder, access: PullAccess, cache: ManifestCache) -> None:
        self.forwarder = forwarder
        self.access = access
        self.cache = cache
        self.metrics = forwarder.metrics

    async def get(self, request: web.Request) -> web.StreamResponse:
        name, reference = repository_target(request)
        if not is_digest(reference) or not answerable(
            request.method, request.query_string, request.headers
        ):
            return await self.forwarder.handle(request)
        auth = request.headers.get(hdrs.AUTHORIZATION)
        if self.access.known(name, auth):
            try:
                entry = await self.cache.lookup(self.cache.key(name, reference))
            except CacheUnavailable as exc:
                log.warning("manifest cache unavailable (%s): asking the registry", exc)
                self.metrics.manifest_cache("unavailable")
            else:
                if entry is not None and accepts(
                    request.headers.getall(hdrs.ACCEPT, []), entry.content_type
                ):
                    self.metrics.manifest_cache("hit")
                    return await self._answer(request, entry.headers.items(), entry._body)
                self.metrics.manifest_cache("miss")
        else:
            self.metrics.manifest_cache("unproven")
        return await self._fill(request, name, reference, auth)

    async def _fill(
        self, request: web.Request, name: str, digest: str, auth: str | None
    ) -> web.StreamResponse:
        started = time.monotonic()
        async with self.forwarder.open(request) as upstream:
            if upstream.status == 200:
                self.access.remember(name, auth)
            if request.method != "GET" or not keepable(
                upstream.status, upstream.headers, upstream.content_length
            ):
                return await self.forwarder.relay(request, upstream)
            body = await read_capped(
                upstream.content,
                upstream.content_length,
                MAX_ENTRY_BYTES,
                "the manifest",
            )
            headers = kept_headers(upstream.headers.items())
        self.metrics.streamed(request.path, FROM_UPSTREAM, len(body))
        if compute_digest(body, digest_algorithm(digest)) == digest:
            await self.cache.store(name, digest, headers, body, started)
        else:
            log.warning("%s@%s: the registry's body has another digest: not cached", name, digest)
        return await self._answer(request, headers, body)

    async def _answer(
        self, request: web.Request, headers: Iterable[tuple[str, str]], body: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers=client_response_headers(
                CIMultiDict(headers), upstream=self.forwarder.upstream, public=request.url.origin()
            )
        )
        await response.prepare(request)
        if request.method != "HEAD":
            await response.write(body)
        await response.write_eof()
        return response

    async def forget(self, name: str, reference: str) -> None:
        """A delete through the proxy: the entry goes, and fills already under way keep out."""
        if is_digest(reference):
            await self.cache.forget(name, reference)
