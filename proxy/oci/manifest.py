"""Pure inspection of a pushed manifest: does it refer to a subject, and what is its descriptor?

The digest is always computed over the exact bytes received; the JSON is parsed only to read it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from proxy.oci.names import digest_error

IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_TYPES = frozenset({IMAGE_MANIFEST, IMAGE_INDEX})
# Content types that say nothing about the manifest: then its own `mediaType` field decides.
_GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream"})
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
# What one descriptor may carry into an answer. A manifest may hold 4 MiB of annotations, and
# every referrers answer repeats them: 30 such referrers took the proxy from 47 to 374 MiB.
MAX_ANNOTATION_BYTES = 16 * 1024
MAX_ARTIFACT_TYPE = 255  # RFC 6838: type and subtype of at most 127 characters each


class ManifestInvalid(ValueError):
    """The manifest names a subject that is not a valid descriptor."""


@dataclass(frozen=True, slots=True)
class Referrer:
    """What the index keeps of a manifest with a subject."""

    subject: str
    digest: str
    artifact_type: str | None
    descriptor: bytes  # serialized once, spliced into every answer
    trimmed: bool = False  # its annotations were over the bound and left out


def compute_digest(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](body).hexdigest()}"


def digest_algorithm(reference: str) -> str:
    """The algorithm a PUT names by its digest reference; sha256 for tags and unknown ones."""
    algorithm, sep, _ = reference.partition(":")
    return algorithm if sep and algorithm in _HASHES else "sha256"


def media_type(content_type: str) -> str:
    """A Content-Type's media type, parameters left out, as sent (callers that match it
    case-insensitively lower it)."""
    return content_type.split(";", 1)[0].strip()


def _media_type(content_type: str, document: dict[str, Any]) -> str | None:
    declared = media_type(content_type).lower()
    if declared in _GENERIC_TYPES:
        field = document.get("mediaType")
        declared = field if isinstance(field, str) else ""
    return declared if declared in _OCI_TYPES else None


def _subject_digest(subject: object) -> str:
    if not isinstance(subject, dict):
        raise ManifestInvalid("subject must be a descriptor object")
    if not isinstance(subject.get("mediaType"), str):
        raise ManifestInvalid("subject.mediaType must be a string")
    digest = subject.get("digest")
    if not isinstance(digest, str):
        raise ManifestInvalid("subject.digest must be a string")
    problem = digest_error(digest)
    if problem:
        raise ManifestInvalid(f"subject.digest is invalid: {problem}")
    size = subject.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid("subject.size must be a non-negative integer")
    return digest


def string_map(value: object) -> TypeGuard[dict[str, str]]:
    """The image-spec's annotations: a map of strings to strings."""
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    )


def within_bound(annotations: dict[str, str], max_bytes: int) -> bool:
    return len(orjson.dumps(annotations)) <= max_bytes


def _artifact_type(media_type: str, document: dict[str, Any]) -> str | None:
    declared = document.get("artifactType")
    if isinstance(declared, str) and len(declared) > MAX_ARTIFACT_TYPE:
        raise ManifestInvalid(f"artifactType longer than {MAX_ARTIFACT_TYPE} characters")
    if isinstance(declared, str) and declared:
        return declared
    config = document.get("config")
    if media_type == IMAGE_MANIFEST and isinstance(config, dict):
        config_type = config.get("mediaType")
        if isinstance(config_type, str) and config_type:
            return config_type
    return None


def described(
    subject: str,
    media_type: str,
    digest: str,
    size: int,
    artifact_type: str | None,
    annotations: dict[str, str] | None,
    trimmed: bool,
) -> Referrer:
    """The one way a referrer's descriptor is written, whether from a pushed manifest or from
    a tag-schema index someone else wrote."""
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if annotations:
        descriptor["annotations"] = annotations
    return Referrer(subject, digest, artifact_type or None, orjson.dumps(descriptor), trimmed)


def inspect_manifest(
    body: bytes,
    content_type: str,
    algorithm: str = "sha256",
    max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
) -> Referrer | None:
    """The referrer record for an OCI manifest or index with a subject; None for anything else.

    Bodies that are not JSON objects are left for the upstream to judge. A subject that is
    present but malformed, annotations that are not strings, raise ManifestInvalid, so they are
    refused before anything is stored. Annotations over `max_annotation_bytes` (serialized) are
    left out of the descriptor; the referrer is still recorded (`trimmed`).
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or "subject" not in document:
        return None
    media_type = _media_type(content_type, document)
    if media_type is None:
        return None
    subject = _subject_digest(document["subject"])
    artifact_type = _artifact_type(media_type, document)
    annotations = document.get("annotations") or {}
    if not string_map(annotations):
        raise ManifestInvalid("annotations must map strings to strings")
    trimmed = bool(annotations) and not within_bound(annotations, max_annotation_bytes)
    digest = compute_digest(body, algorithm)
    kept = None if trimmed else annotations
    return described(subject, media_type, digest, len(body), artifact_type, kept, trimmed)
