"""GET /v2/<name>/tags/list, answered by the proxy: tag-schema tags hidden, `n`/`last`/`Link`
honoured (Distribution 2.8 ignores `n` and `last` and returns tags unsorted)."""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

import orjson
from aiohttp import hdrs, web

from proxy.http.forward import Forwarder
from proxy.http.routing import TARGET
from proxy.oci.errors import OCIError
from proxy.oci.tagschema import visible_tags
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)
MAX_UPSTREAM_PAGES = 1000
MAX_HELD_BYTES = (
    64 * 1024 * 1024
)  # of one answer's upstream pages; a registry's list is cut past it


def _page_size(request: web.Request) -> int | None:
    text = request.query.get("n")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise OCIError(
            400, "PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer: {text!r}"
        )
    return int(text)


class TagListApi:
    def __init__(self, client: RegistryClient, forwarder: Forwarder) -> None:
        self.client = client
        self.forwarder = forwarder

    async def tags_list(self, request: web.Request) -> web.Response:
        name = request[TARGET].name or ""
        n = _page_size(request)
        last = request.query.get("last") or None
        auth = request.headers.get(hdrs.AUTHORIZATION)
        path: str | None = f"/v2/{name}/tags/list"
        tags: list[str] = []
        asked: set[str] = set()
        held = 0
        for _ in range(MAX_UPSTREAM_PAGES):
            if path is None or path in asked:  # the end, or a registry going round
                break
            if held > MAX_HELD_BYTES:
                log.warning("%s: tag list over %d bytes upstream, cut", name, MAX_HELD_BYTES)
                break
            asked.add(path)
            answer = await self.client.call("GET", path, auth=auth)
            held += len(answer.body)
            if answer.status != 200:
                return self.forwarder.reply(request, answer)
            try:
                tags += orjson.loads(answer.body).get("tags") or []
            except (orjson.JSONDecodeError, AttributeError) as exc:
                raise OCIError(502, "UNAVAILABLE", "upstream tag list is not JSON") from exc
            path = answer.next_page
        else:
            log.warning("%s: tag list longer than %d upstream pages, cut", name, MAX_UPSTREAM_PAGES)
        page, more = visible_tags(tags, last, n)
        answer_headers = {hdrs.CONTENT_TYPE: "application/json"}
        if more and page:
            query = urlencode({"n": n, "last": page[-1]}, quote_via=quote)
            answer_headers[hdrs.LINK] = f'</v2/{name}/tags/list?{query}>; rel="next"'
        return web.Response(body=orjson.dumps({"name": name, "tags": page}), headers=answer_headers)
