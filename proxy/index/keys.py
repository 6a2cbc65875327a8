"""Every Redis key the proxy uses (the index, and the manifest cache), built here and nowhere
else.

Repository names and digests never contain `|`, `{` or `}`, so `{<repository>|<digest>}` is
unambiguous, and is also a Redis Cluster hash tag that keeps one subject's keys on one slot:
every script touches the keys of one subject only.
An artifact type may contain anything, so it only ever ends a key.
"""

from __future__ import annotations

PREFIX = "orp:v1"


def _of(repository: str, digest: str, what: str) -> str:
    """A key of one subject (or referrer), in its cluster slot."""
    return f"{PREFIX}:{{{repository}|{digest}}}:{what}"


def subject_positions(repository: str, subject: str) -> str:
    """The subject's position counter (positions before it came from a global counter)."""
    return _of(repository, subject, "position")


def subject_tombstones(repository: str, subject: str) -> str:
    """Sorted set: removed referrer digests, scored by when their tombstone expires."""
    return _of(repository, subject, "gone")


def subject_all(repository: str, subject: str) -> str:
    return _of(repository, subject, "all")


def subject_type(repository: str, subject: str, artifact_type: str) -> str:
    return _of(repository, subject, f"type:{artifact_type}")


def subject_descriptors(repository: str, subject: str) -> str:
    return _of(repository, subject, "descriptors")


def referrer(repository: str, digest: str) -> str:
    """Hash: which subject and artifact type a referrer was recorded under."""
    return _of(repository, digest, "referrer")


def tag_sync(repository: str, subject: str) -> str:
    return _of(repository, subject, "tag-sync")


def subject_lock(repository: str, subject: str) -> str:
    return _of(repository, subject, "lock")


# The manifest cache: one hash tag, so every cache key is on one cluster slot and its scripts run
# there; index keys are never among them.
MANIFEST_CACHE_PREFIX = f"{PREFIX}:{{manifest-cache}}"
MANIFEST_CACHE_ENTRY = f"{MANIFEST_CACHE_PREFIX}:entry:"


def manifest_cache(key: str) -> list[str]:
    """The entry, its tombstone, the expiry order (zset), the sizes (hash), the total bytes."""
    return [
        MANIFEST_CACHE_ENTRY + key,
        f"{MANIFEST_CACHE_PREFIX}:gone:{key}",
        f"{MANIFEST_CACHE_PREFIX}:order",
        f"{MANIFEST_CACHE_PREFIX}:sizes",
        f"{MANIFEST_CACHE_PREFIX}:bytes",
    ]
