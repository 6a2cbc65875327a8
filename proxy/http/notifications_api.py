"""`POST /notifications`: Distribution's events, authenticated, checked and queued.

Outside `/v2/`, so it never shadows a registry path. Only a caller with the configured bearer
token is heard (401 otherwise, before the body is read); a malformed envelope is a 400 and
changes nothing; a full queue is a 503, which Distribution retries (it blocks its queue for this
endpoint meanwhile). Everything else is 202 at once: the events are applied in the background.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, OCIError
from proxy.oci.notifications import (
    CONTENT_TYPES,
    MAX_ENVELOPE_BYTES,
    EnvelopeInvalid,
    parse_envelope,
    token_matches,
)
from proxy.services.event_indexer import EventIndexer
from proxy.upstream.client import read_capped


class NotificationsApi:
    def __init__(self, indexer: EventIndexer, token: str, metrics: Metrics) -> None:
        self.indexer = indexer
        self.token = token
        self.metrics = metrics

    async def post(self, request: web.Request) -> web.StreamResponse:
        if not token_matches(request.headers.get(hdrs.AUTHORIZATION), self.token):
            self.metrics.notification("unauthorized")
            raise OCIError(
                401,
                "UNAUTHORIZED",
                "registry notifications need the proxy's bearer token",
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="referrers-proxy"'},
            )
        try:
            if request.content_type not in CONTENT_TYPES:
                raise EnvelopeInvalid(f"Content-Type {request.content_type!r} is no envelope")
            body = await read_capped(
                request.content,
                request.content_length,
                MAX_ENVELOPE_BYTES,
                "the envelope",
                from_client=True,
            )
            events = parse_envelope(body)
        except EnvelopeInvalid as exc:
            self.metrics.notification("invalid")
            raise OCIError(400, "UNSUPPORTED", f"malformed notification envelope: {exc}") from exc
        except BodyTooLarge as exc:
            self.metrics.notification("invalid")
            raise OCIError(413, "SIZE_INVALID", str(exc)) from exc
        if not self.indexer.offer(events):
            self.metrics.notification("full")
            raise OCIError(
                503, "UNAVAILABLE", "event queue full; retry", headers={hdrs.RETRY_AFTER: "1"}
            )
        self.metrics.notification("accepted")
        return web.Response(status=202)
