"""The Redis index: shared by every replica, so all of them answer the same."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager, suppress

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import RedisError

from proxy.index import keys
from proxy.index.base import TOMBSTONE_SECONDS, IndexUnavailable, Page, TagSync
from proxy.manifest import Referrer

log = logging.getLogger(__name__)
POOL_WAIT_SECONDS = 10.0
# A held lock is renewed every third of this while its holder lives, so a slow upstream call
# cannot outlast it; it bounds how long a crashed holder blocks the subject.
LOCK_SECONDS = 10.0
LOCK_WAIT_SECONDS = 10.0  # a writer waiting longer answers 503, and its client retries
_BATCH = 500  # referrers per script call: a long listing must not stall Redis for others


@asynccontextmanager
async def _guard(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        log.error("redis index: %s failed: %r", action, exc)
        raise IndexUnavailable(f"index {action} failed: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Records referrers under one subject, every key on the subject's slot: each one's position is
# taken and the referrer listed under it in one step, so no referrer can commit behind a cursor
# already handed out. Positions count per subject and always come after the highest listed, so
# a subject listed under the former global counter (or by a replica of the former release while
# both run) keeps its order, and cursors handed out before stay valid.
# KEYS: position counter, descriptors, all, tombstones, then one type set per referrer.
# ARGV: "1" for a push (lifts tombstones) or "0" for a listing (skips them), now, then a
# (digest, descriptor, artifact type or "") triple per referrer. Reply: how many were new.
_ADD = """
local counter, descriptors, all, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local push = ARGV[1] == '1'
redis.call('ZREMRANGEBYSCORE', gone, '-inf', ARGV[2])
local added = 0
for i = 0, (#ARGV - 2) / 3 - 1 do
  local digest, descriptor, artifact_type = ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i]
  if push then redis.call('ZREM', gone, digest) end
  if push or not redis.call('ZSCORE', gone, digest) then
    redis.call('HSET', descriptors, digest, descriptor)
    if not redis.call('ZSCORE', all, digest) then
      local position = redis.call('INCR', counter)
      local last = redis.call('ZRANGE', all, -1, -1, 'WITHSCORES')
      if last[2] and tonumber(last[2]) >= position then
        position = tonumber(last[2]) + 1
        redis.call('SET', counter, position)
      end
      redis.call('ZADD', all, position, digest)
      if artifact_type ~= '' then redis.call('ZADD', KEYS[5 + i], position, digest) end
      added = added + 1
    end
  end
end
return added
"""

# Unlists a referrer and tombstones it, in one step on its subject's slot.
# KEYS: descriptors, all, its type set, tombstones. ARGV: digest, tombstone expiry, its TTL.
_REMOVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[3])
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


async def _renew(lock: Lock, done: asyncio.Event) -> None:
    """Reset the lock's expiry every third of its life until `done`; stop at the first failure
    (the release then reports it). It ends by the event, not by cancellation: a cancellation
    that lands while redis-py runs the command can be lost, and the holder then waited forever
    on a renewal that kept its lock alive (seen in the growing-list soak, reproduced with 600
    short holds)."""
    while not done.is_set():
        with suppress(TimeoutError):
            async with asyncio.timeout(LOCK_SECONDS / 3):
                await done.wait()
        if done.is_set():
            return
        try:
            await lock.reacquire()
        except (RedisError, OSError) as exc:
            log.error("redis index: lock %s not renewed: %r", lock.name, exc)
            return


class RedisIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
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
        await self._record(repository, referrer.subject, [referrer], push=True)

    async def add_listed(self, repository: str, subject: str, referrers: Sequence[Referrer]) -> int:
        added = 0
        for first in range(0, len(referrers), _BATCH):
            chunk = referrers[first : first + _BATCH]
            added += await self._record(repository, subject, chunk, push=False)
        return added

    async def _record(
        self, repository: str, subject: str, referrers: Sequence[Referrer], *, push: bool
    ) -> int:
        """Each referrer's own record (its subject, for a delete by digest) is written first,
        on its own slot: a crash before the subject's step leaves a record of nothing listed,
        which a delete clears; the reverse would leave a listing no delete could find. A push
        knows the subject from the manifest itself and sets it; a listing only fills a record
        that is missing, so no tag-schema index can point a referrer at another subject."""
        args: list[str | bytes | float] = ["1" if push else "0", time.time()]
        type_sets = []
        async with _guard("add"):
            if not push:
                referrers = await self._own(repository, subject, referrers)
                if not referrers:
                    return 0
            async with self._redis.pipeline(transaction=False) as records:
                for referrer in referrers:
                    record = keys.referrer(repository, referrer.digest)
                    fields = (("subject", subject), ("artifact_type", referrer.artifact_type or ""))
                    for name, value in fields:
                        if push:
                            records.hset(record, name, value)
                        else:
                            records.hsetnx(record, name, value)
                    args += [referrer.digest, referrer.descriptor, referrer.artifact_type or ""]
                    type_sets.append(
                        keys.subject_type(repository, subject, referrer.artifact_type or "")
                    )
                await records.execute()
            added: int = await self._add(
                keys=[
                    keys.subject_positions(repository, subject),
                    keys.subject_descriptors(repository, subject),
                    keys.subject_all(repository, subject),
                    keys.subject_tombstones(repository, subject),
                    *type_sets,
                ],
                args=args,
            )
        return added

    async def _own(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> list[Referrer]:
        """Those a listing of `subject` may record: not recorded under another subject by a
        push (a tag-schema index may list any manifest; where it belongs is its own)."""
        async with self._redis.pipeline(transaction=False) as lookups:
            for referrer in referrers:
                lookups.hget(keys.referrer(repository, referrer.digest), "subject")
            subjects = await lookups.execute()
        return [
            referrer
            for referrer, recorded in zip(referrers, subjects, strict=True)
            if recorded is None or _text(recorded) == subject
        ]

    async def remove(self, repository: str, digest: str) -> None:
        """The record (on the referrer's slot) names the subject; the subject's change is one
        script on the subject's slot. The record stays (a few bytes): deleted after the script,
        a push of the same digest landing in between would be listed with no record, so no
        later delete could find it."""
        record = keys.referrer(repository, digest)
        async with _guard("remove"):
            subject, artifact_type = await self._redis.hmget(record, ["subject", "artifact_type"])
            if subject is None:
                return
            subject = _text(subject)
            await self._remove(
                keys=[
                    keys.subject_descriptors(repository, subject),
                    keys.subject_all(repository, subject),
                    keys.subject_type(repository, subject, _text(artifact_type or b"")),
                    keys.subject_tombstones(repository, subject),
                ],
                args=[digest, time.time() + TOMBSTONE_SECONDS, int(TOMBSTONE_SECONDS)],
            )

    async def tombstoned(self, repository: str, subject: str, digest: str) -> bool:
        async with _guard("read"):
            expires = await self._redis.zscore(keys.subject_tombstones(repository, subject), digest)
        return expires is not None and expires > time.time()

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
        done = asyncio.Event()
        renewal = asyncio.create_task(_renew(lock, done))
        try:
            yield
        finally:
            done.set()
            # Bounded however the renewal ends: a command in flight times out by the socket.
            await asyncio.wait({renewal}, timeout=LOCK_SECONDS)
            async with _guard("unlock"):
                await lock.release()

    async def ping(self) -> None:
        async with _guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
