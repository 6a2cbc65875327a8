"""Pure rules of the manifest cache: which requests it may answer, which upstream answers it may
keep, and when a kept answer is the one the upstream would give this request.

A manifest fetched by digest never changes, but whether the upstream *serves* it depends on the
request: Distribution answers an OCI manifest only to an `Accept` that lists its media type (404
otherwise), conditional and range requests get other answers, and a query may mean anything to
another registry. So the cache answers plain `GET`/`HEAD`s only, and only when the request's
`Accept` lists the kept answer's `Content-Type`; everything else goes upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.oci.manifest import media_type

MAX_ENTRY_BYTES = 1 << 20  # larger manifests (rare; the registry's limit is 4 MiB) pass through
# Request headers that make the upstream's answer depend on more than the digest.
_CONDITIONAL = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Range")
# Per-answer headers that a copy must not repeat; aiohttp adds a fresh Date.
_NOT_KEPT = frozenset({"date"})


def answerable(method: str, query_string: str, headers: Mapping[str, str]) -> bool:
    """Whether a by-digest manifest request is one the cache may answer or fill."""
    if method not in ("GET", "HEAD") or query_string:
        return False
    return not any(name in headers for name in _CONDITIONAL)


def keepable(status: int, headers: Mapping[str, str], content_length: int | None) -> bool:
    """Only a complete 200 of known, bounded size, that does not declare itself per-caller."""
    if status != 200 or content_length is None or content_length > MAX_ENTRY_BYTES:
        return False
    if "Set-Cookie" in headers or "Content-Type" not in headers:
        return False
    directives = headers.get("Cache-Control", "").lower()
    return "no-store" not in directives and "private" not in directives


def kept_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name.lower() not in _NOT_KEPT]


def accepts(accept_values: Iterable[str], content_type: str) -> bool:
    """Whether any `Accept` header value lists `content_type`'s media type itself (a wildcard
    does not count: Distribution does not serve an OCI manifest to `*/*`)."""
    wanted = media_type(content_type).lower()
    offered = {media_type(item).lower() for value in accept_values for item in value.split(",")}
    return bool(wanted) and wanted in offered
