"""Pure rules for the tags a registry keeps only while it lacks the Referrers API: which tags
they are, and when one may go by digest.

Tag-schema indexes (`sha256-<hex>`, written by the proxy or by legacy clients) are read by
clients only when `/referrers` answers 404, so an upgraded registry never serves them again.
Keep tags (`_referrer.<alg>-<hex>`) name the referrer manifest itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from enum import StrEnum

from proxy.oci.tagschema import is_keep_tag, is_tag_schema_name


class LegacyKind(StrEnum):
    TAG_INDEX = "tag-index"
    KEEP_TAG = "keep-tag"


def legacy_kind(tag: str) -> LegacyKind | None:
    if is_tag_schema_name(tag):
        return LegacyKind.TAG_INDEX
    if is_keep_tag(tag):
        return LegacyKind.KEEP_TAG
    return None


def tag_subject(tag: str) -> str:
    """The subject a tag-schema name (`<alg>-<64 hex>`, uncut) is made of."""
    return tag.replace("-", ":", 1)


def why_not_by_digest(
    kind: LegacyKind, tag: str, digest: str, tags_by_digest: Mapping[str, Set[str]]
) -> str | None:
    """Why a tag the registry will not delete alone must stay, or None when deleting its
    manifest by digest (which, on Distribution 2.8, removes every tag naming it) takes that tag
    and nothing else: never a keep tag (its manifest is the referrer), and a tag-schema index
    only while no other tag names the same manifest."""
    if kind is LegacyKind.KEEP_TAG:
        return "the registry deletes by digest only, which would delete the referrer itself"
    others = sorted(tags_by_digest.get(digest, set()) - {tag})
    if others:
        return f"tag {others[0]} names the same manifest; a delete by digest would remove it too"
    return None
