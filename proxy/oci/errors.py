"""What can go wrong, as the domain says it; proxy/http/errors.py turns each into an answer.

Exception
 ├── OCIError           a deliberate answer: status + OCI code (bad input, a refusal, ...)
 ├── BodyTooLarge       a body over its cap: the client's -> 413, the registry's -> 502
 ├── UpstreamRefused    the registry refused a call the proxy made of its own -> 502
 └── StreamAborted      the upstream failed after the answer started: only closing is honest
"""

from __future__ import annotations

from typing import Any

import orjson


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


class BodyTooLarge(Exception):
    """A body known to exceed `cap` bytes; `from_client` says whose it was, and so who is at
    fault."""

    def __init__(self, what: str, cap: int, *, from_client: bool) -> None:
        super().__init__(f"{what} is larger than {cap} bytes")
        self.what = what
        self.cap = cap
        self.from_client = from_client


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
