"""Pure checks of a request target, before anything reaches the upstream, and the one way an
upstream URL is made from it.

Only origin-form targets (`/path?query`) are served: an absolute-form target
(`GET https://elsewhere/v2/...`) would otherwise name the host the proxy connects to. The path
must be exactly what the router sees: percent-encoded bytes and dot segments are refused, so
the string validated here is the string aiohttp decodes and routes (`/v2/a/referr%65rs/x` is not
a referrers request in disguise). Distribution answers 500 to malformed digests and cleans `..`
with a redirect, so the proxy judges names, digests and tags itself and answers 400. Paths it
does not recognise are left to the upstream, which may have endpoints of its own.
"""

from __future__ import annotations

import re

from yarl import URL

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


_DOT_SEGMENT = re.compile(r"/\.{1,2}(?:/|$)")


def target_problem(raw_target: str) -> OCIError | None:
    """What is wrong with a request for `raw_target` (as on the request line), or None."""
    if len(raw_target) > MAX_TARGET:
        return OCIError(414, "UNSUPPORTED", f"request target longer than {MAX_TARGET} bytes")
    if not raw_target.startswith("/") or raw_target.startswith("//") or "#" in raw_target:
        return OCIError(400, "UNSUPPORTED", "only origin-form request targets (/path?query)")
    return path_problem(raw_target.partition("?")[0])


def path_problem(raw_path: str) -> OCIError | None:
    """What is wrong with a request for `raw_path` (without its query), or None."""
    if "%" in raw_path or _DOT_SEGMENT.search(raw_path):
        code = "NAME_INVALID" if raw_path.startswith("/v2/") else "UNSUPPORTED"
        return OCIError(400, code, "percent-encoding and dot segments are refused in paths")
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


def upstream_url(origin: URL, target: str) -> URL:
    """`origin` (the configured upstream: scheme, host, port) with an origin-form `target`
    checked by `target_problem` or built by the proxy; nothing in `target` can change where the
    request goes."""
    if not target.startswith("/") or target.startswith("//"):
        raise ValueError(f"not an origin-form target: {target!r}")
    path, _, query = target.partition("?")
    return URL.build(
        scheme=origin.scheme,
        authority=origin.raw_authority,
        path=path,
        query_string=query,
        encoded=True,
    )
