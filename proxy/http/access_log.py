"""What the proxy writes to its logs: never a credential, never a signed or stateful token."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.http.request_id import NO_REQUEST_ID, REQUEST_ID
from proxy.oci.targets import classify

# Query parameters that carry secrets: upload state (an HMAC'd token), bearer tokens in URLs,
# and the signatures of pre-signed blob-storage redirects.
SECRET_PARAMETERS = frozenset(
    {
        "_state",
        "token",
        "access_token",
        "refresh_token",
        "password",
        "signature",
        "sig",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
    }
)
REDACTED = "REDACTED"


def redact_target(raw_target: str) -> str:
    """The request target with the values of secret query parameters replaced."""
    path, sep, query = raw_target.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    cleaned = [(k, REDACTED if k.lower() in SECRET_PARAMETERS else v) for k, v in pairs]
    return f"{path}?{urlencode(cleaned, quote_via=quote, safe=':/')}"


class AccessLogger(AbstractAccessLogger):
    """One line a request; headers (Authorization among them) are never logged. The fields
    also go to the record one by one, for the JSON log (see logs.py)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        target = redact_target(request.raw_path)
        self.logger.info(
            '%s "%s %s" %d %s %.1fms',
            request.remote,
            request.method,
            target,
            response.status,
            response.body_length,
            time * 1000,
            extra={
                "request_id": request.get(REQUEST_ID, NO_REQUEST_ID),
                "remote": request.remote,
                "method": request.method,
                "target": target,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time * 1000, 1),
                "route": classify(request.path).kind,
            },
        )
