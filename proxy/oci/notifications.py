"""Pure: Distribution's notification envelopes read into the few events the proxy acts on.

Distribution (2.x `notifications.endpoints`) POSTs `{"events": [...]}` with the media type
ENVELOPE for every blob and manifest push, pull and delete. Only two kinds matter here: a push
of an OCI manifest or index (it may carry a `subject`), and a delete (a manifest's carries only
`repository` and `digest`; a blob's looks the same and forgetting it changes nothing). Pulls,
blobs, mounts, and pushes of tag-schema and keep tags (written by the proxy or reindex, for
referrers they index themselves) are skipped without a registry call. An envelope with any event
the proxy would act on but cannot trust (a bad name or digest) is refused whole, so a malformed
envelope changes nothing.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.oci.manifest import IMAGE_INDEX, IMAGE_MANIFEST
from proxy.oci.names import is_digest, is_repository_name
from proxy.oci.tagschema import is_keep_tag, is_tag_schema_name

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
CONTENT_TYPES = frozenset({ENVELOPE, "application/json"})
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_EVENTS = 1000  # per envelope; Distribution sends one at a time (measured on 2.8)
_MAY_HAVE_SUBJECT = frozenset({IMAGE_MANIFEST, IMAGE_INDEX})


class EnvelopeInvalid(ValueError):
    """Not an envelope of events the proxy can trust."""


@dataclass(frozen=True, slots=True)
class Pushed:
    repository: str
    digest: str
    tag: str | None  # pushed by this tag; None when pushed by digest


@dataclass(frozen=True, slots=True)
class Deleted:
    repository: str
    digest: str


Event = Pushed | Deleted


def token_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    expected = f"Bearer {token}".encode()
    given = (authorization or "").encode("utf-8", "surrogateescape")  # any bytes: no 500
    return hmac.compare_digest(given, expected)


def _target(event: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    target = event.get("target")
    if not isinstance(target, dict):
        raise EnvelopeInvalid("event without a target object")
    repository, digest = target.get("repository"), target.get("digest")
    if not isinstance(repository, str) or not is_repository_name(repository):
        raise EnvelopeInvalid("event target with an invalid repository")
    if not isinstance(digest, str) or not is_digest(digest):
        raise EnvelopeInvalid("event target with an invalid digest")
    return target, repository, digest


def _event(event: object) -> Event | None:
    if not isinstance(event, dict):
        raise EnvelopeInvalid("an event is not an object")
    action = event.get("action")
    if not isinstance(action, str):
        raise EnvelopeInvalid("event without an action")
    if action == "delete":
        target = event.get("target")
        if isinstance(target, dict) and target.get("digest") is None and target.get("tag"):
            # Distribution's event for a tag it removed along with its manifest: the
            # manifest's own event carries the digest. Refusing it would wedge the registry's
            # queue (it retries a refused envelope forever).
            return None
        _, repository, digest = _target(event)
        return Deleted(repository, digest)
    if action != "push":
        return None
    target = event.get("target")
    if not isinstance(target, dict):
        raise EnvelopeInvalid("event without a target object")
    kind = target.get("mediaType")
    if kind is not None and not isinstance(kind, str):
        raise EnvelopeInvalid("push event target with a mediaType that is not a string")
    if kind not in _MAY_HAVE_SUBJECT:  # none at all: nothing says it may have a subject
        return None
    _, repository, digest = _target(event)
    tag = target.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise EnvelopeInvalid("event target with a tag that is not a string")
    if tag and (is_keep_tag(tag) or is_tag_schema_name(tag)):
        return None
    return Pushed(repository, digest, tag or None)


def parse_envelope(body: bytes) -> list[Event]:
    """The events to act on, in the envelope's order."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeInvalid("not JSON") from exc
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list):
        raise EnvelopeInvalid('no "events" list')
    if len(events) > MAX_EVENTS:
        raise EnvelopeInvalid(f"more than {MAX_EVENTS} events")
    return [found for found in map(_event, events) if found is not None]


def credentials_header(text: str) -> str:
    """`user:password` (a trailing newline ignored) as a Basic `Authorization` value."""
    user, sep, password = text.strip("\r\n").partition(":")
    if not sep or not user:
        raise ValueError("the notifications credentials file must hold user:password")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
