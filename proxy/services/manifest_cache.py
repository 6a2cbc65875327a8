"""Where by-digest manifests are kept: aiohttp-client-cache's `CacheBackend` (cache keys, expiry
and filtering on read, deletes) over one of two bounded storages that implement the library's
`BaseCache` interface.

The library's own storages do not fit as they are: its in-memory `DictCache` has no bound, and
its `RedisCache` keeps every entry in one hash that never expires (expired entries go only when
read again) and unpickles what it reads. So `MemoryEntries` is an LRU bounded by bytes, and
`RedisEntries` keeps one key per entry with a TTL, counts the bytes of all entries in one Lua
script that evicts the oldest past the bound, and serializes without pickle. Both keep a
tombstone for a while after a delete so that a fill that began before the delete cannot store
what was deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import orjson
import redis.asyncio as aioredis
from aiohttp_client_cache.backends.base import BaseCache, CacheBackend, ResponseOrKey
from aiohttp_client_cache.cache_control import utcnow
from aiohttp_client_cache.response import CachedResponse
from cachetools import LRUCache, TTLCache
from redis.exceptions import RedisError
from yarl import URL

from proxy.config import ManifestCacheMode, Settings
from proxy.index import keys as redis_keys
from proxy.oci.targets import upstream_url

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 30.0  # how long a delete blocks stores of what it deleted
FILL_LIMIT_SECONDS = TOMBSTONE_SECONDS / 2  # a fill slower than this is not stored
_ENTRY_OVERHEAD = 512  # bytes an entry holds besides its body and headers (objects, key)
_MAX_TOMBSTONES = 100_000


class CacheUnavailable(Exception):
    """The storage did not answer (Redis down or slow): the request goes upstream instead."""


def entry_size(entry: CachedResponse) -> int:
    headers = sum(len(name) + len(value) for name, value in entry.raw_headers)
    return len(entry._body or b"") + headers + _ENTRY_OVERHEAD


def make_entry(
    url: URL, headers: Sequence[tuple[str, str]], body: bytes, seconds: float
) -> CachedResponse:
    """A 200 the upstream gave: its headers and body only (the library's own conversion would
    also keep the request's headers, the caller's Authorization among them)."""
    return CachedResponse(
        method="GET",
        reason="OK",
        status=200,
        url=url,
        version="1.1",
        body=body,
        raw_headers=tuple((_raw(name), _raw(value)) for name, value in headers),
        expires=utcnow() + timedelta(seconds=seconds),
    )


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_entry(entry: CachedResponse) -> bytes:
    """One line of JSON (headers as latin-1 text of their raw bytes), then the body."""
    meta = {
        "url": str(entry.url),
        "expires": entry.expires.isoformat() if entry.expires else None,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in entry.raw_headers
        ],
    }
    return orjson.dumps(meta) + b"\n" + (entry._body or b"")


def decode_entry(data: bytes) -> CachedResponse:
    line, _, body = data.partition(b"\n")
    meta = orjson.loads(line)
    expires = meta["expires"]
    return CachedResponse(
        method="GET",
        reason="OK",
        status=200,
        url=URL(meta["url"]),
        version="1.1",
        body=body,
        raw_headers=tuple(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in meta["headers"]
        ),
        expires=datetime.fromisoformat(expires) if expires else None,
    )


class MemoryEntries(BaseCache):
    """In this process: least recently used out first once the entries pass `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self._entries: LRUCache[str, CachedResponse] = LRUCache(max_bytes, getsizeof=entry_size)
        self._gone: TTLCache[str, bool] = TTLCache(_MAX_TOMBSTONES, TOMBSTONE_SECONDS)

    async def read(self, key: str) -> ResponseOrKey:
        return self._entries.get(key)

    async def write(self, key: str, item: ResponseOrKey) -> None:
        if isinstance(item, CachedResponse) and key not in self._gone:
            self._entries[key] = item

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
        self._gone[key] = True

    async def bulk_delete(self, keys: set[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def contains(self, key: str) -> bool:
        return key in self._entries

    async def clear(self) -> None:
        self._entries.clear()

    async def size(self) -> int:
        return len(self._entries)

    async def keys(self) -> AsyncIterator[str]:
        for key in list(self._entries):
            yield key

    async def values(self) -> AsyncIterator[ResponseOrKey]:
        for value in list(self._entries.values()):
            yield value

    async def close(self) -> None:
        self._entries.clear()


# KEYS: 1 entry, 2 its tombstone, 3 order (zset: entry key -> expiry ms), 4 sizes (hash),
# 5 total bytes. Every key shares one hash tag (index/keys.py), so the script runs on one slot.
_DROP = """
local function drop(key)
  local size = redis.call('HGET', KEYS[4], key)
  if size then
    redis.call('DECRBY', KEYS[5], size)
    redis.call('HDEL', KEYS[4], key)
  end
  redis.call('ZREM', KEYS[3], key)
  redis.call('DEL', key)
end
"""
# ARGV: 1 value, 2 ttl ms, 3 now ms, 4 max total bytes. 0 when a tombstone refused the write.
_WRITE = (
    _DROP
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, 100)) do
  drop(key)
end
drop(KEYS[1])
local size = string.len(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[2]), KEYS[1])
redis.call('HSET', KEYS[4], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[5], size)
while total > tonumber(ARGV[4]) do
  drop(redis.call('ZRANGE', KEYS[3], 0, 0)[1])
  total = tonumber(redis.call('GET', KEYS[5]))
end
return 1
"""
)
# ARGV: 1 tombstone ms.
_DELETE = (
    _DROP
    + """
drop(KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
"""
)


class RedisEntries(BaseCache):
    """In Redis, shared by every replica: one key per entry, expiring with the entry, and the
    bytes of all entries bounded by `max_bytes` (oldest first out). Index keys carry no TTL and
    are never touched."""

    def __init__(self, client: aioredis.Redis, max_bytes: int, seconds: float) -> None:
        super().__init__()
        self._redis = client
        self._max_bytes = max_bytes
        self._ttl_ms = int(seconds * 1000)
        self._write = client.register_script(_WRITE)
        self._delete = client.register_script(_DELETE)

    async def read(self, key: str) -> ResponseOrKey:
        data = await self._redis.get(redis_keys.manifest_cache(key)[0])
        return decode_entry(data) if isinstance(data, bytes) else None

    async def write(self, key: str, item: ResponseOrKey) -> None:
        if isinstance(item, CachedResponse):
            now_ms = int(time.time() * 1000)
            args: list[bytes | int] = [encode_entry(item), self._ttl_ms, now_ms, self._max_bytes]
            await self._write(keys=redis_keys.manifest_cache(key), args=args)

    async def delete(self, key: str) -> None:
        await self._delete(
            keys=redis_keys.manifest_cache(key), args=[int(TOMBSTONE_SECONDS * 1000)]
        )

    async def bulk_delete(self, keys: set[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def contains(self, key: str) -> bool:
        return bool(await self._redis.exists(redis_keys.manifest_cache(key)[0]))

    async def clear(self) -> None:
        async for key in self.keys():
            await self.delete(key)

    async def size(self) -> int:
        return int(await self._redis.zcard(redis_keys.manifest_cache("")[2]))

    async def keys(self) -> AsyncIterator[str]:
        prefix = len(redis_keys.MANIFEST_CACHE_ENTRY)
        for name in await self._redis.zrange(redis_keys.manifest_cache("")[2], 0, -1):
            if isinstance(name, bytes):
                yield name.decode()[prefix:]

    async def values(self) -> AsyncIterator[ResponseOrKey]:
        async for key in self.keys():
            yield await self.read(key)

    async def close(self) -> None:
        await self._redis.aclose()


class ManifestCache:
    """By-digest manifests of one upstream, keyed by the library from the upstream URL (so the
    repository is part of the key: entries never cross repositories)."""

    def __init__(
        self, storage: MemoryEntries | RedisEntries, upstream: URL, seconds: float
    ) -> None:
        self.backend = CacheBackend(cache_name="manifests", allowed_methods=("GET",))
        self.backend.responses = self.storage = storage
        self.upstream = upstream
        self.seconds = seconds

    def url(self, repository: str, digest: str) -> URL:
        return upstream_url(self.upstream, f"/v2/{repository}/manifests/{digest}")

    def key(self, repository: str, digest: str) -> str:
        return str(self.backend.create_key("GET", self.url(repository, digest)))

    async def lookup(self, key: str) -> CachedResponse | None:
        """The live entry, or None; an expired one is deleted by the library as it is read."""
        try:
            entry: CachedResponse | None = await self.backend.get_response(key)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(type(exc).__name__) from exc
        return entry

    async def store(
        self,
        repository: str,
        digest: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        started: float,
    ) -> None:
        """Keep a fill that began at `started` (time.monotonic()), unless it took so long that
        a delete's tombstone may be gone. A storage that fails loses nothing but the entry."""
        if time.monotonic() - started > FILL_LIMIT_SECONDS:
            return
        entry = make_entry(self.url(repository, digest), headers, body, self.seconds)
        try:
            await self.storage.write(self.key(repository, digest), entry)
        except (RedisError, OSError) as exc:
            log.warning("manifest cache: store failed (%s)", type(exc).__name__)

    async def forget(self, repository: str, digest: str) -> None:
        """After a delete through the proxy. A storage that fails leaves the entry to its TTL."""
        try:
            await self.backend.delete(self.key(repository, digest))
        except (RedisError, OSError) as exc:
            log.warning(
                "manifest cache: delete of %s@%s not recorded (%s); stale for up to %.0f s",
                repository,
                digest,
                type(exc).__name__,
                self.seconds,
            )

    async def close(self) -> None:
        await self.storage.close()


CACHE_POOL_WAIT_SECONDS = 1.0  # a cache that makes requests wait is worse than none


def open_manifest_cache(settings: Settings) -> ManifestCache | None:
    if settings.manifest_cache is ManifestCacheMode.OFF:
        return None
    storage: MemoryEntries | RedisEntries
    if settings.manifest_cache is ManifestCacheMode.REDIS and settings.redis_url:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=CACHE_POOL_WAIT_SECONDS,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
        )
        storage = RedisEntries(
            aioredis.Redis.from_pool(pool),
            settings.manifest_cache_bytes,
            settings.manifest_cache_seconds,
        )
    else:
        storage = MemoryEntries(settings.manifest_cache_bytes)
    return ManifestCache(storage, settings.upstream, settings.manifest_cache_seconds)
