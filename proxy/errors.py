"""The one place where failures become OCI error responses.

Exception
 ├── OCIError           a deliberate answer: status + OCI code (bad input, index down, ...)
 ├── StreamAborted      the upstream failed after the answer started: only closing is honest
 ├── UpstreamRefused    the registry refused a call the proxy made of its own -> 502
 ├── aiohttp.ClientError / TimeoutError   upstream faults -> 502 / 504 UNAVAILABLE
 └── anything else      a bug -> 500 UNKNOWN, logged with its traceback, never sent
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.index.base import IndexUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTERNAL_ERROR = "internal proxy error"


class OCIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers


class StreamAborted(Exception):
    """Raised once headers were sent: aiohttp then drops the connection so the client sees a
    truncated body instead of a silently short one."""


class UpstreamRefused(Exception):
    """The registry answered a call of the proxy's own (a tag-schema read or write, a keep tag)
    with a status that is no success."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"upstream refused {what} ({status})")
        self.what = what
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth asking again later: the registry was busy or failing, not saying no."""
        return self.status == 429 or self.status >= 500


def fault(exc: BaseException) -> str:
    """An upstream failure for a log line: its class only, since aiohttp's messages may carry
    the upstream URL with its query (an upload's `_state` token)."""
    return type(exc).__name__


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return orjson.dumps({"errors": [error]})


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
    except UpstreamRefused as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(502, "UNAVAILABLE", f"{exc}; retry")
    except IndexUnavailable as exc:
        log.error("%s %s: referrers index unavailable: %s", request.method, request.path, exc)
        return error_response(
            503, "UNAVAILABLE", "referrers index unavailable, retry", headers={"Retry-After": "1"}
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
