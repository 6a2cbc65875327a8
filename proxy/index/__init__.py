"""The referrers index: one protocol, an embedded and a Redis implementation."""

from proxy.config import Settings
from proxy.index.base import IndexStore, IndexUnavailable, Page
from proxy.index.embedded import EmbeddedIndex
from proxy.index.redis import RedisIndex


def open_index(settings: Settings) -> IndexStore:
    if settings.redis_url:
        return RedisIndex.from_url(settings.redis_url, settings.redis_max_connections)
    return EmbeddedIndex()


__all__ = ["EmbeddedIndex", "IndexStore", "IndexUnavailable", "Page", "RedisIndex", "open_index"]
