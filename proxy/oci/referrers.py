"""Pure building of referrers answers: the image index body, its headers, and page cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlencode

import orjson

from proxy.oci.manifest import IMAGE_INDEX

_INDEX_HEAD = b'{"schemaVersion":2,"mediaType":"' + IMAGE_INDEX.encode() + b'","manifests":['
_INDEX_TAIL = b"]}"
CURSOR_PARAM = "next"


class CursorInvalid(ValueError):
    pass


DESCRIPTOR_BASE = 1024  # a descriptor without annotations: media types, digest, size


def bounded(descriptor: bytes, max_annotation_bytes: int) -> bytes | None:
    """A stored descriptor as an answer may carry it: one recorded before the annotation bound
    (or by another writer) loses its annotations when it is over the bound, and is left out
    when even that is too large. A length check only, for all within the bound."""
    if len(descriptor) <= DESCRIPTOR_BASE + max_annotation_bytes:
        return descriptor
    parsed = orjson.loads(descriptor)
    parsed.pop("annotations", None)
    trimmed = orjson.dumps(parsed)
    return trimmed if len(trimmed) <= DESCRIPTOR_BASE else None


def render_index(descriptors: Iterable[bytes]) -> bytes:
    """Splices pre-serialized descriptors: no JSON encoding per request."""
    return _INDEX_HEAD + b",".join(descriptors) + _INDEX_TAIL


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if not text.startswith("p") or not text[1:].isdigit():
            raise ValueError(text)
        return int(text[1:])
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise CursorInvalid(f"invalid page cursor {token!r}") from exc


def next_link(name: str, subject: str, artifact_types: Sequence[str], position: int) -> str:
    """RFC 8288 link to the page after `position`, keeping the filter."""
    query = [("artifactType", value) for value in artifact_types]
    query.append((CURSOR_PARAM, encode_cursor(position)))
    return f'</v2/{name}/referrers/{subject}?{urlencode(query, quote_via=quote)}>; rel="next"'
