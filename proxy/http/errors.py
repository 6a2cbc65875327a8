"""The one place where failures become OCI error responses (the failures: proxy/oci/errors.py).

aiohttp.ClientError and TimeoutError are upstream faults (502 / 504 UNAVAILABLE); anything not
named here is a bug: 500 UNKNOWN, logged with its traceback, never sent.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from proxy.index.base import IndexUnavailable
from proxy.oci.errors import (
    BodyTooLarge,
    OCIError,
    StreamAborted,
    UpstreamRefused,
    error_body,
    fault,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal proxy error"


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message, detail),
        content_type="application/json",
        headers=headers,
    )


def _http_exception_code(status: int) -> str:
    return {401: "UNAUTHORIZED", 403: "DENIED", 413: "SIZE_INVALID"}.get(status, "UNSUPPORTED")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OCIError as exc:
        log.info(
            "%s %s -> %d %s: %s", request.method, request.path, exc.status, exc.code, exc.message
        )
        return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _http_exception_code(exc.status), exc.reason)
    except StreamAborted:
        raise
    except BodyTooLarge as exc:
        if exc.from_client:
            log.info("%s %s -> 413: %s", request.method, request.path, exc)
            return error_response(413, "MANIFEST_INVALID", str(exc))
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(502, "UNAVAILABLE", f"upstream answer too large: {exc.what}")
    except UpstreamRefused as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(502, "UNAVAILABLE", f"{exc}; retry")
    except IndexUnavailable as exc:
        log.error("%s %s: referrers index unavailable: %s", request.method, request.path, exc)
        return error_response(
            503,
            "UNAVAILABLE",
            "referrers index unavailable, retry",
            headers={hdrs.RETRY_AFTER: "1"},
        )
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        log.warning("%s %s: upstream timed out: %s", request.method, request.path, fault(exc))
        return error_response(504, "UNAVAILABLE", "upstream registry timed out")
    except aiohttp.ClientError as exc:
        log.warning("%s %s: upstream unavailable: %s", request.method, request.path, fault(exc))
        return error_response(502, "UNAVAILABLE", "upstream registry unavailable")
    except Exception:
        log.exception("%s %s: internal error", request.method, request.path)
        return error_response(500, "UNKNOWN", INTERNAL_ERROR)
