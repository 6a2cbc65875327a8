"""Pure grammar of repository names and digests (distribution-spec, image-spec descriptor.md)."""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# Registered algorithms have a fixed length of lowercase hex; others only the general grammar.
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def is_repository_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def is_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def digest_error(digest: str) -> str | None:
    """Why `digest` is not a valid digest, or None when it is."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        return "digest must look like <algorithm>:<encoded>"
    algorithm, encoded = match.groups()
    length = _HEX_LENGTH.get(algorithm)
    if length is not None and (len(encoded) != length or not _LOWER_HEX.fullmatch(encoded)):
        return f"a {algorithm} digest has {length} lowercase hex characters"
    return None


def is_digest(reference: str) -> bool:
    return digest_error(reference) is None


def stored_digest_error(digest: str) -> str | None:
    """As digest_error, and the algorithm must be one registries store content under; for
    digests in request paths (Distribution answers 500 to others, its storage path in detail)."""
    problem = digest_error(digest)
    if problem is None and digest.partition(":")[0] not in _HEX_LENGTH:
        return f"unsupported digest algorithm {digest.partition(':')[0]!r}"
    return problem
