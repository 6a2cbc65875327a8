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
from dataclasses import dataclass

from yarl import URL

from proxy.oci.errors import OCIError
from proxy.oci.names import is_repository_name, is_tag, stored_digest_error

MAX_TARGET = 8192  # longer request targets are refused with 414; aiohttp's own limit is higher
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ROUTE_CLASSES = (
    "base",
    "catalog",
    "blob",
    "upload",
    "manifest",
    "referrers",
    "tags",
    "ops",
    "other",
)
# The name is greedy, as in Distribution's router: a repository may be called `a/blobs/b` or
# `x/manifests`, and the last endpoint-shaped tail decides.
_ENDPOINT = re.compile(
    r"/v2/(?P<name>.+)/(?:"
    r"blobs/uploads(?P<upload>(?:/[^/]*)?)"
    r"|blobs/(?P<blob>[^/]+)"
    r"|manifests/(?P<manifest>[^/]+)"
    r"|referrers/(?P<referrers>[^/]+)"
    r"|tags/list(?P<tags>)"
    r")"
)
_DOT_SEGMENT = re.compile(r"/\.{1,2}(?:/|$)")


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path addresses: `kind` is one of ROUTE_CLASSES; `name` and `reference`
    (a digest, a tag or an upload id) are set for the endpoints under a repository."""

    kind: str
    name: str | None = None
    reference: str | None = None


def classify(path: str) -> Target:
    """The one grammar of request paths (without query), shared by routing, validation and
    metrics."""
    if path in ("/v2", "/v2/"):
        return Target("base")
    if path == "/v2/_catalog":
        return Target("catalog")
    if path in OPS_PATHS:
        return Target("ops")
    match = _ENDPOINT.fullmatch(path)
    if match is None or match.lastgroup is None:
        return Target("other")
    kind = match.lastgroup
    return Target(kind, match["name"], match[kind].removeprefix("/") or None)


def checked_target(raw_target: str) -> Target:
    """What a request for `raw_target` (as on the request line) addresses, classified once;
    OCIError when it is not to be served."""
    if len(raw_target) > MAX_TARGET:
        raise OCIError(414, "UNSUPPORTED", f"request target longer than {MAX_TARGET} bytes")
    if not raw_target.startswith("/") or raw_target.startswith("//") or "#" in raw_target:
        raise OCIError(400, "UNSUPPORTED", "only origin-form request targets (/path?query)")
    return checked_path(raw_target.partition("?")[0])


def checked_path(raw_path: str) -> Target:
    """As checked_target, for a path without its query. Percent-encoding is refused, so the
    path classified here is the one aiohttp decodes and routes."""
    if "%" in raw_path or _DOT_SEGMENT.search(raw_path):
        code = "NAME_INVALID" if raw_path.startswith("/v2/") else "UNSUPPORTED"
        raise OCIError(400, code, "percent-encoding and dot segments are refused in paths")
    target = classify(raw_path)
    if target.name is None:
        return target
    if not is_repository_name(target.name):
        raise OCIError(400, "NAME_INVALID", f"invalid repository name {target.name!r}")
    reference = target.reference or ""
    if target.kind in ("blob", "referrers") or (target.kind == "manifest" and ":" in reference):
        problem = stored_digest_error(reference)
        if problem:
            raise OCIError(400, "DIGEST_INVALID", problem)
    elif target.kind == "manifest" and not is_tag(reference):
        raise OCIError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    return target


def upstream_url(origin: URL, target: str) -> URL:
    """`origin` (the configured upstream: scheme, host, port) with an origin-form `target`
    checked by `checked_target` or built by the proxy; nothing in `target` can change where the
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
