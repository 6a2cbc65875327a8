"""Pure rules of the referrers tag schema (distribution-spec "Referrers Tag Schema").

Legacy clients keep, for each subject `<alg>:<encoded>`, an image index tagged with a name derived
from the digest that lists its referrers. The proxy reads those indexes, and writes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.oci.manifest import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    MAX_ANNOTATION_BYTES,
    MAX_ARTIFACT_TYPE,
    Referrer,
    described,
    media_type,
    string_map,
    within_bound,
)
from proxy.oci.names import digest_error, is_tag
from proxy.oci.referrers import render_index

_NOT_TAG_CHARS = re.compile(r"[^a-zA-Z0-9._-]")
# The names the schema gives to registered-algorithm digests: hidden from tag lists.
_SCHEMA_TAG = re.compile(r"(?:sha256|sha512)-[a-f0-9]{64}")
_MANIFEST_TYPES = frozenset({IMAGE_MANIFEST, IMAGE_INDEX})
KEEP_TAG_PREFIX = "_referrer."
_WHOLE_SHA256 = re.compile(r"sha256-[a-f0-9]{64}")  # the one algorithm whose tag name is uncut


class TagIndexInvalid(ValueError):
    """What the tag points at is not a referrers index for that subject."""


def tag_name(digest: str) -> str:
    """Algorithm cut to 32 characters, `-`, encoded part cut to 64; other characters become `-`."""
    algorithm, _, encoded = digest.partition(":")
    return _NOT_TAG_CHARS.sub("-", f"{algorithm[:32]}-{encoded[:64]}")


def tag_names(digest: str) -> list[str]:
    """The current name, then the older untruncated one where it differs and is a valid tag."""
    current = tag_name(digest)
    legacy = digest.replace(":", "-", 1)
    names = [current]
    if legacy != current and is_tag(legacy):
        names.append(legacy)
    return names


def is_tag_schema_name(tag: str) -> bool:
    return _SCHEMA_TAG.fullmatch(tag) is not None


def keep_tag(digest: str) -> str:
    """The hidden tag that keeps a referrer manifest through `garbage-collect --delete-untagged`
    (Distribution 2.8 keeps a manifest only when a tag names it): `_referrer.` and the digest's
    tag-schema name, so it meets neither the schema's names, cosign's `sha256-<hex>.sig`, nor
    the tags people choose."""
    return KEEP_TAG_PREFIX + tag_name(digest)


def is_keep_tag(tag: str) -> bool:
    return tag.startswith(KEEP_TAG_PREFIX)


def keep_tag_digest(tag: str) -> str | None:
    """The digest a keep tag names, when its name holds all of it (sha256); else None."""
    named = tag.removeprefix(KEEP_TAG_PREFIX)
    if not is_keep_tag(tag) or not _WHOLE_SHA256.fullmatch(named):
        return None
    return named.replace("-", ":", 1)


@dataclass(frozen=True, slots=True)
class TagIndex:
    digest: str
    referrers: list[Referrer]


def _referrer(subject: str, entry: Any, max_annotation_bytes: int) -> Referrer:
    if not isinstance(entry, dict):
        raise TagIndexInvalid("a listed descriptor is not an object")
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    if media_type not in _MANIFEST_TYPES:
        raise TagIndexInvalid(f"a listed descriptor has mediaType {media_type!r}")
    if not isinstance(digest, str) or digest_error(digest):
        raise TagIndexInvalid(f"a listed descriptor has digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TagIndexInvalid(f"a listed descriptor has size {size!r}")
    artifact_type = entry.get("artifactType")
    if isinstance(artifact_type, str) and len(artifact_type) > MAX_ARTIFACT_TYPE:
        raise TagIndexInvalid(f"a listed artifactType is longer than {MAX_ARTIFACT_TYPE}")
    # What another client wrote: annotations that are no string map, or over the bound, are
    # left out (`trimmed`) rather than refusing the whole index.
    annotations = entry.get("annotations")
    kept = string_map(annotations) and within_bound(annotations, max_annotation_bytes)
    return described(
        subject,
        media_type,
        digest,
        size,
        artifact_type if isinstance(artifact_type, str) else None,
        annotations if kept else None,
        annotations is not None and not kept,
    )


def parse_tag_index(
    subject: str,
    body: bytes,
    content_type: str,
    digest: str,
    max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
) -> TagIndex:
    """The referrers a tag-schema index lists, checked: it must be an OCI image index, and not
    the subject itself (some registries resolve `sha256-<hex>` to the subject: oras-go#1396)."""
    if digest == subject:
        raise TagIndexInvalid("the tag resolves to the subject itself")
    if media_type(content_type) != IMAGE_INDEX:
        raise TagIndexInvalid(f"the tag holds {content_type!r}, not an image index")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TagIndexInvalid("the tag holds no JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
        raise TagIndexInvalid("the tag holds no list of manifests")
    if document.get("mediaType", IMAGE_INDEX) != IMAGE_INDEX:
        raise TagIndexInvalid("the tag's mediaType is not an image index")
    listed = [_referrer(subject, entry, max_annotation_bytes) for entry in document["manifests"]]
    return TagIndex(digest, listed)


@dataclass(frozen=True, slots=True)
class Listing:
    descriptors: list[bytes]
    digests: list[str]
    left_out: int  # indexed referrers the registry's manifest limit left no room for


def copy_listing(
    listed: Sequence[str], indexed: Sequence[tuple[str, bytes]], max_bytes: int
) -> Listing:
    """What a subject's tag-schema index should list, given the digests it lists now and the
    (digest, descriptor) pairs the proxy's index holds: what it lists and the index still holds,
    in its order (a legacy client's entries keep their place), then the index's others in
    arrival order, each while the rendered index stays within `max_bytes`, the registry's
    manifest limit. Past it, newer referrers are listed by the proxy alone."""
    descriptors = dict(indexed)
    order = list(dict.fromkeys(d for d in listed if d in descriptors))  # each once
    kept = set(order)
    order += [digest for digest, _ in indexed if digest not in kept]
    size = len(render_index([])) - 1  # the first descriptor needs no comma
    chosen: list[str] = []
    for digest in order:
        size += len(descriptors[digest]) + 1
        if size > max_bytes:
            break
        chosen.append(digest)
    return Listing([descriptors[d] for d in chosen], chosen, len(order) - len(chosen))


def missing_children(error_body: bytes) -> set[str]:
    """The listed manifests a registry refused an index for because they no longer exist
    (Distribution: 400 MANIFEST_BLOB_UNKNOWN, one error each, detail the digest); empty when the
    refusal was for anything else."""
    try:
        errors = orjson.loads(error_body).get("errors")
    except (orjson.JSONDecodeError, AttributeError):
        return set()
    missing: set[str] = set()
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, dict) or error.get("code") != "MANIFEST_BLOB_UNKNOWN":
            return set()
        detail = error.get("detail")
        digest = detail.get("digest") if isinstance(detail, dict) else detail
        if not isinstance(digest, str) or digest_error(digest):
            return set()
        missing.add(digest)
    return missing


def visible_tags(tags: list[str], last: str | None, n: int | None) -> tuple[list[str], bool]:
    """One page of a tag list without tag-schema names and keep tags, ASCIIbetical, starting
    after `last`; and whether more follow."""
    kept = sorted(tag for tag in set(tags) if not is_tag_schema_name(tag) and not is_keep_tag(tag))
    if last is not None:
        kept = [tag for tag in kept if tag > last]
    if n is None:
        return kept, False
    return kept[:n], len(kept) > n
