"""One id per request, in the proxy's logs, on the answer and on every upstream call it makes.

A client's `X-Request-ID` is kept when it is short and made of safe characters, so its logs, the
proxy's and the registry's line up; anything else (log injection, a megabyte of header) is
replaced by a fresh id. The id lives in a context variable for the handler's duration, which
also reaches tasks the handler starts and the upstream session's trace hooks.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

HEADER = "X-Request-ID"
MAX_LENGTH = 128
NO_REQUEST_ID = "-"  # in logs, for what no request caused
_SAFE = re.compile(rf"[A-Za-z0-9._:+/=-]{{1,{MAX_LENGTH}}}")

REQUEST_ID = web.RequestKey("request_id", str)
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def accepted_request_id(value: str | None) -> str | None:
    """The client's id when it is safe to log and forward as it is, else None."""
    if value is None or not _SAFE.fullmatch(value):
        return None
    return value


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _current.get()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = accepted_request_id(request.headers.get(HEADER)) or new_request_id()
    request[REQUEST_ID] = request_id
    token = _current.set(request_id)
    try:
        return await handler(request)
    finally:
        _current.reset(token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also streamed answers, whose headers go out inside the handler."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[HEADER] = request_id


async def send_request_id(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    """Upstream trace hook: the id replaces whatever X-Request-ID the client sent."""
    request_id = _current.get()
    if request_id is not None:
        params.headers[HEADER] = request_id
