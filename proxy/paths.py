"""Pure checks of a /v2 request path, before anything reaches the upstream.

Distribution answers 500 to malformed digests and cleans `..` with a redirect, so the proxy
judges names, digests and tags itself and answers 400. Paths it does not recognise are left to
the upstream, which may have endpoints of its own.
"""

from __future__ import annotations

import re

from proxy.errors import OCIError
from proxy.names import is_repository_name, stored_digest_error

MAX_TARGET = 8192  # longer request targets are refused with 414; aiohttp's own limit is higher
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_ENDPOINT = re.compile(
    r"/v2/(?P<name>.+?)/(?:"
    r"blobs/uploads/(?P<upload>[^/]*)"
    r"|blobs/(?P<blob>[^/]+)"
    r"|manifests/(?P<manifest>[^/]+)"
    r"|referrers/(?P<referrer>[^/]+)"
    r"|tags/list"
    r")"
)


def target_problem(raw_target: str) -> OCIError | None:
    """What is wrong with a request for `raw_target` (path and query, as sent), or None."""
    if len(raw_target) > MAX_TARGET:
        return OCIError(414, "UNSUPPORTED", f"request target longer than {MAX_TARGET} bytes")
    return path_problem(raw_target.partition("?")[0])


def path_problem(raw_path: str) -> OCIError | None:
    """What is wrong with a request for `raw_path` (without its query), or None."""
    if not raw_path.startswith("/v2/") or raw_path in ("/v2/", "/v2/_catalog"):
        return None
    match = _ENDPOINT.fullmatch(raw_path)
    if match is None:
        return None
    name = match["name"]
    if not is_repository_name(name):
        return OCIError(400, "NAME_INVALID", f"invalid repository name {name!r}")
    digest = match["blob"] or match["referrer"]
    if digest is not None:
        problem = stored_digest_error(digest)
        return OCIError(400, "DIGEST_INVALID", problem) if problem else None
    reference = match["manifest"]
    if reference is not None:
        if ":" in reference:
            problem = stored_digest_error(reference)
            return OCIError(400, "DIGEST_INVALID", problem) if problem else None
        if not _TAG.fullmatch(reference):
            return OCIError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    return None
