"""Every request's target, checked and classified once (proxy/oci/targets.py); the handlers read
the name and reference from here, so the path that was validated is the path that is served."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.oci.errors import OCIError
from proxy.oci.targets import Target, checked_target

TARGET = web.RequestKey("target", Target)


@web.middleware
async def target_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad targets, names, digests and tags never reach the upstream, nor a Host header that no
    URL can be made of (answers rewrite Location and Link to it)."""
    target = checked_target(request.raw_path)
    try:
        request.url.origin()
    except ValueError as exc:
        raise OCIError(400, "UNSUPPORTED", "invalid Host header") from exc
    request[TARGET] = target
    return await handler(request)


def repository_target(request: web.Request) -> tuple[str, str]:
    """The repository name and reference of a request routed to a repository endpoint."""
    target = request[TARGET]
    if target.name is None or target.reference is None:
        raise OCIError(404, "UNSUPPORTED", "no repository endpoint")
    return target.name, target.reference
