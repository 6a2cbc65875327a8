"""The proxy's own calls to the upstream: with the caller's credentials and no broader ones,
never following a redirect, every body read under a cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.oci.errors import BodyTooLarge, UpstreamRefused
from proxy.oci.manifest import IMAGE_INDEX, IMAGE_MANIFEST, compute_digest
from proxy.oci.targets import upstream_url

ACCEPT_MANIFESTS = ", ".join(
    [
        IMAGE_INDEX,
        IMAGE_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


async def read_capped(
    stream: aiohttp.StreamReader,
    declared: int | None,
    cap: int,
    what: str,
    *,
    from_client: bool = False,
) -> bytes:
    """The whole body of `what`, refused as soon as it is known to exceed `cap`."""
    if declared is not None and declared > cap:
        raise BodyTooLarge(what, cap, from_client=from_client)
    body = bytearray()
    async for chunk in stream.iter_any():
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge(what, cap, from_client=from_client)
    return bytes(body)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    next_page: str | None = None  # the path of the upstream's rel="next" page, when it pages
    pages_on: bool = False  # it links a rel="next" page, one the proxy can ask or not

    @property
    def content_digest(self) -> str:
        """The upstream's digest of the body, or ours when it sent none."""
        return self.headers.get("Docker-Content-Digest") or compute_digest(self.body)


def _next_page(response: aiohttp.ClientResponse) -> tuple[str | None, bool]:
    """Only the path and query of a rel="next" link (the host of the next page is always the
    configured upstream), and whether there is one at all: one outside /v2/, or that no URL can
    be made of, is none to ask, yet says the list goes on."""
    if hdrs.LINK not in response.headers:
        return None, False
    try:
        nexts = [link for rel, link in response.links.items() if "next" in str(rel).split()]
        target = URL(str(nexts[0].get("url", ""))) if nexts else None
    except ValueError:
        return None, True
    if target is None:
        return None, False
    if not target.raw_path.startswith("/v2/"):
        return None, True
    return target.raw_path_qs, True


MAX_PAGES = 10_000  # of one list: a registry whose next page never ends is cut here
MAX_LIST_BODY = 64 * 1024 * 1024  # a catalog or tag list page can be far larger than a manifest


class RegistryClient:
    def __init__(self, session: aiohttp.ClientSession, upstream: URL, max_body: int) -> None:
        self.session = session
        self.upstream = upstream
        self.max_body = max_body

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if auth:
            sent[hdrs.AUTHORIZATION] = auth
        async with self.session.request(
            method,
            upstream_url(self.upstream, path),
            headers=sent,
            data=data,
            allow_redirects=False,
        ) as response:
            body = await read_capped(
                response.content,
                response.content_length,
                self.max_body,
                f"the answer to {method} {path}",
            )
            return Answer(response.status, response.headers, body, *_next_page(response))

    async def pages(
        self, path: str, auth: str | None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Answer]:
        """Each page of a paged list (the catalog, a repository's tags, the referrers of a
        subject); UpstreamRefused if a page is refused, or the list goes round, elsewhere, on
        past MAX_PAGES or to a page it cannot ask: what depends on having all of it must hear
        that it has not."""
        next_path: str | None = path
        asked: set[str] = set()
        for _ in range(MAX_PAGES):
            if next_path is None:
                return
            if next_path in asked:
                raise UpstreamRefused(f"GET {path}: the next page is one already read", 200)
            if URL(next_path).raw_path != URL(path).raw_path:
                raise UpstreamRefused(f"GET {path}: the next page is of another list", 200)
            asked.add(next_path)
            answer = await self.call("GET", next_path, auth=auth, headers=headers)
            if answer.status != 200:
                raise UpstreamRefused(f"GET {next_path}", answer.status)
            yield answer
            if answer.pages_on and answer.next_page is None:
                raise UpstreamRefused(f"GET {path}: a next page that cannot be asked", 200)
            next_path = answer.next_page
        if next_path is not None:
            raise UpstreamRefused(f"GET {path}: more than {MAX_PAGES} pages", 200)

    async def listed(self, path: str, key: str, auth: str | None) -> AsyncIterator[str]:
        """Every item under `key` of a paged list of names, page after page (see `pages`)."""
        async for answer in self.pages(path, auth):
            items = page_items(answer.body, key)
            if items is None:
                raise UpstreamRefused(f"GET {path}: no list of {key} in the answer", 200)
            for item in items:
                yield item

    async def get_manifest(
        self, repository: str, reference: str, auth: str | None, etag: str | None = None
    ) -> Answer:
        headers: dict[str, str] = {hdrs.ACCEPT: ACCEPT_MANIFESTS}
        if etag:
            headers[hdrs.IF_NONE_MATCH] = f'"{etag}"'
        return await self.call(
            "GET", f"/v2/{repository}/manifests/{reference}", auth=auth, headers=headers
        )

    async def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str, auth: str | None
    ) -> Answer:
        return await self.call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            auth=auth,
            headers={hdrs.CONTENT_TYPE: media_type},
            data=body,
        )

    async def delete_manifest(self, repository: str, digest: str, auth: str | None) -> Answer:
        return await self.call("DELETE", f"/v2/{repository}/manifests/{digest}", auth=auth)


def page_items(body: bytes, key: str) -> list[str] | None:
    """The strings under `key` of a list page (absent or null: none); None when the page is
    anything else, which ends a walk with an error rather than a traceback."""
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(page, dict):
        return None
    items = [] if page.get(key) is None else page[key]
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        return None
    return items
