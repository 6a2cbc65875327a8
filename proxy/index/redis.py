"""The Redis index: shared by every replica, so all of them answer the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager, suppress

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import RedisError

from proxy.index import keys
from proxy.index.base import IndexUnavailable, Page, TagSync
from proxy.manifest import Referrer

log = logging.getLogger(__name__)
POOL_WAIT_SECONDS = 10.0
# A held lock is renewed every third of this while its holder lives, so a slow upstream call
# cannot outlast it; it bounds how long a crashed holder blocks the subject.
LOCK_SECONDS = 10.0
LOCK_WAIT_SECONDS = 10.0  # a writer waiting longer answers 503, and its client retries


@asynccontextmanager
async def _guard(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        log.error("redis index: %s failed: %r", action, exc)
        raise IndexUnavailable(f"index {action} failed: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# One server-side step: the position is taken and the referrer recorded under it atomically, so
# no referrer can commit behind a cursor already handed out (taking it first, outside the
# transaction, let a slow add land before a walk in progress and never be listed).
# KEYS: position counter, descriptors, all, type, referrer record.
# ARGV: digest, descriptor, subject, artifact type ("" for none).
_ADD = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
local position = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[3], position, ARGV[1])
redis.call('HSET', KEYS[5], 'subject', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], position, ARGV[1])
  redis.call('HSET', KEYS[5], 'artifact_type', ARGV[4])
end
return position
"""

# One page in one round trip: each position set (one per artifact type asked for, or the set of
# all) read from `after` on, merged by position, and the chosen descriptors fetched.
# KEYS: descriptors, then the position sets. ARGV: after (exclusive), limit.
# Reply: 1 when more follow, the last position listed, then the descriptors.
_PAGE = """
local limit = tonumber(ARGV[2])
local seen, entries = {}, {}
for i = 2, #KEYS do
  local run = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. ARGV[1], '+inf',
                         'WITHSCORES', 'LIMIT', 0, limit + 1)
  for j = 1, #run, 2 do
    if not seen[run[j]] then
      seen[run[j]] = true
      entries[#entries + 1] = {tonumber(run[j + 1]), run[j]}
    end
  end
end
table.sort(entries, function(a, b) return a[1] < b[1] end)
local count = math.min(#entries, limit)
local reply = {#entries > limit and 1 or 0, count > 0 and entries[count][1] or 0}
for first = 1, count, 500 do
  local digests = {}
  for i = first, math.min(first + 499, count) do digests[#digests + 1] = entries[i][2] end
  for _, descriptor in ipairs(redis.call('HMGET', KEYS[1], unpack(digests))) do
    -- false: removed since its position was read; simply left out
    if descriptor then reply[#reply + 1] = descriptor end
  end
end
return reply
"""


async def _renew(lock: Lock) -> None:
    """Reset the lock's expiry every third of its life; stop at the first failure (the release
    then reports it)."""
    while True:
        await asyncio.sleep(LOCK_SECONDS / 3)
        try:
            await lock.reacquire()
        except (RedisError, OSError) as exc:
            log.error("redis index: lock %s not renewed: %r", lock.name, exc)
            return


class RedisIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._add = client.register_script(_ADD)
        self._page = client.register_script(_PAGE)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64) -> RedisIndex:
        """A bounded pool that makes callers wait for a connection: redis-py's default pool
        fails with "Too many connections" once concurrency passes its cap (seen in the soak),
        and every extra connection costs memory."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=POOL_WAIT_SECONDS,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=15,
        )
        return cls(aioredis.Redis.from_pool(pool))

    async def add(self, repository: str, referrer: Referrer) -> None:
        subject = referrer.subject
        async with _guard("add"):
            await self._add(
                keys=[
                    keys.position_counter(),
                    keys.subject_descriptors(repository, subject),
                    keys.subject_all(repository, subject),
                    keys.subject_type(repository, subject, referrer.artifact_type or ""),
                    keys.referrer(repository, referrer.digest),
                ],
                args=[referrer.digest, referrer.descriptor, subject, referrer.artifact_type or ""],
            )

    async def remove(self, repository: str, digest: str) -> None:
        record = keys.referrer(repository, digest)
        async with _guard("remove"):
            subject, artifact_type = await self._redis.hmget(record, ["subject", "artifact_type"])
            if subject is None:
                return
            subject = _text(subject)
            async with self._redis.pipeline(transaction=True) as tx:
                tx.zrem(keys.subject_all(repository, subject), digest)
                if artifact_type is not None:
                    tx.zrem(keys.subject_type(repository, subject, _text(artifact_type)), digest)
                tx.hdel(keys.subject_descriptors(repository, subject), digest)
                tx.delete(record)
                await tx.execute()

    async def page(
        self,
        repository: str,
        subject: str,
        artifact_types: Collection[str],
        after: int,
        limit: int,
    ) -> Page:
        sets = (
            [keys.subject_type(repository, subject, t) for t in artifact_types]
            if artifact_types
            else [keys.subject_all(repository, subject)]
        )
        async with _guard("read"):
            more, last, *descriptors = await self._page(
                keys=[keys.subject_descriptors(repository, subject), *sets], args=[after, limit]
            )
        return Page(descriptors, int(last) if more else None)

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None:
        async with _guard("read"):
            digest, at = await self._redis.hmget(
                keys.tag_sync(repository, subject), ["digest", "at"]
            )
        if digest is None or at is None:
            return None
        return TagSync(_text(digest), float(at))

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        key = keys.tag_sync(repository, subject)
        async with _guard("write"):
            if sync.digest:
                await self._redis.hset(key, mapping={"digest": sync.digest, "at": sync.at})
            else:
                await self._redis.delete(key)

    @asynccontextmanager
    async def subject_lock(self, repository: str, subject: str) -> AsyncIterator[None]:
        """redis-py's lock (a token set with NX and an expiry, released only by its owner),
        renewed in the background while held: it expires only when its holder is gone or cut
        off from Redis longer than LOCK_SECONDS, and then releasing it fails loudly (503)."""
        lock = self._redis.lock(
            keys.subject_lock(repository, subject),
            timeout=LOCK_SECONDS,
            blocking_timeout=LOCK_WAIT_SECONDS,
            sleep=0.01,
        )
        async with _guard("lock"):
            if not await lock.acquire():
                raise IndexUnavailable(f"{repository} {subject} stayed locked")
        renewal = asyncio.create_task(_renew(lock))
        try:
            yield
        finally:
            renewal.cancel()
            with suppress(asyncio.CancelledError):
                await renewal
            async with _guard("unlock"):
                await lock.release()

    async def ping(self) -> None:
        async with _guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
