"""The referrers index: one protocol, an embedded and a Redis implementation."""

from proxy.config import Settings
from proxy.index.base import IndexStore, IndexUnavailable, Page
from proxy.index.connect import open_redis_index
from proxy.index.embedded import EmbeddedIndex
from proxy.index.redis import RedisIndex


def open_index(settings: Settings) -> IndexStore:
    if settings.uses_redis:
        return open_redis_index(settings)
    return EmbeddedIndex()


__all__ = ["EmbeddedIndex", "IndexStore", "IndexUnavailable", "Page", "RedisIndex", "open_index"]
