"""The Redis index: shared by every replica, so all of them answer the same.

The same code serves one Redis server, a master found through Sentinel and a Redis Cluster:
every script touches one subject's keys (one slot), and the writes that an answer vouches for
(an attach, a delete, taking a subject's lock) can be made to wait until `replicas` replicas hold
them (WAIT on the connection that wrote), so a failover to one of them loses none of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, RedisClusterException, RedisError

from proxy.index import keys
from proxy.index.base import TOMBSTONE_SECONDS, IndexUnavailable, Page, TagSync
from proxy.oci.manifest import Referrer

log = logging.getLogger(__name__)
POOL_WAIT_SECONDS = 10.0
# A held lock is renewed every third of this while its holder lives, so a slow upstream call
# cannot outlast it; it bounds how long a crashed holder blocks the subject.
LOCK_SECONDS = 10.0
LOCK_WAIT_SECONDS = 10.0  # a writer waiting longer answers 503, and its client retries
# The holder stops at this share of the lock's life, before it could have expired in Redis (its
# expiry counts from when the server saw the command, later than when it was sent).
LOCK_SAFE_SHARE = 0.95
RENEW_RETRY_SECONDS = 0.2  # between renewal attempts while Redis does not answer (failover)
WAIT_MILLISECONDS = 1000  # how long a write waits for its replicas before it counts as failed
_BATCH = 500  # referrers per script call: a long listing must not stall Redis for others
# AttributeError: redis-py's async cluster client closes every connection when a node reports
# CLUSTERDOWN (as during a failover), and an operation connecting at that moment fails on its
# closed writer with AttributeError instead of a ConnectionError.
_FAILURES = (RedisError, RedisClusterException, OSError, AttributeError)

Client = aioredis.Redis | RedisCluster


@asynccontextmanager
async def _guard(action: str) -> AsyncIterator[None]:
    try:
        yield
    except _FAILURES as exc:
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
# (digest, descriptor, artifact type or "") triple per referrer. Reply: the digests it lists.
_ADD = """
local counter, descriptors, all, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local push = ARGV[1] == '1'
redis.call('ZREMRANGEBYSCORE', gone, '-inf', ARGV[2])
local listed = {}
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
    end
    listed[#listed + 1] = digest
  end
end
return listed
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


def _move(deadline: asyncio.Timeout, when: float) -> bool:
    """Reschedule the holder's deadline; False when it has already fired (the holder is being
    cancelled, and a reschedule would raise)."""
    if deadline.expired():
        return False
    try:
        deadline.reschedule(when)
    except RuntimeError:  # expiring: the cancellation is on its way
        return False
    return True


async def _unless(done: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `done` is set meanwhile."""
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await done.wait()


class NotReplicated(RedisError):
    """A write reached the master but not the replicas it had to: a failover could lose it."""


class RedisIndex:
    def __init__(
        self,
        client: Client,
        *,
        replicas: int = 0,
        max_connections: int = 64,
        sentinels: Sequence[aioredis.Redis] = (),
    ) -> None:
        """`max_connections` operations run at once and the rest wait (up to
        POOL_WAIT_SECONDS): the bound holds for every kind of client, where redis-py's own pools
        either fail at their cap ("Too many connections", seen in the soak) or have none.
        `sentinels`: the clients that find the master, closed with it."""
        self.client = client
        self._sentinels = sentinels
        self.replicas = replicas
        self._connections = asyncio.Semaphore(max_connections)
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._page = client.register_script(_PAGE)

    @asynccontextmanager
    async def slot(self, action: str) -> AsyncIterator[None]:
        """One of the `max_connections` places."""
        try:
            async with asyncio.timeout(POOL_WAIT_SECONDS):
                await self._connections.acquire()
        except TimeoutError as exc:
            raise IndexUnavailable(f"index {action}: no Redis connection free") from exc
        try:
            yield
        finally:
            self._connections.release()

    @asynccontextmanager
    async def connection(self, action: str) -> AsyncIterator[None]:
        """A place, and Redis failures as IndexUnavailable."""
        async with self.slot(action), _guard(action):
            yield

    async def replicated(self, key: str, *command: Any) -> tuple[Any, int]:
        """Run a write on `key`'s master, then WAIT there, on the same connection, until the
        replicas asked for hold it (WAIT vouches only for its own connection's writes).

        On a cluster, both go down one connection of the key's node, with no retry and no
        redirect: redis-py's cluster pipeline retries a failed batch after dropping where its
        WAIT was to go, which could then vouch for nothing. A failure here makes the client
        rediscover the cluster, and the caller's client retries."""
        result: Any
        acknowledged: Any
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
            node = self.client.get_node_from_key(key)
            if node is None:
                raise IndexUnavailable(f"no Redis Cluster node serves {key}")
            sent = [
                PipelineCommand(0, *command),
                PipelineCommand(1, "WAIT", self.replicas, WAIT_MILLISECONDS),
            ]
            try:
                await node.execute_pipeline(sent)
                for step in sent:
                    if isinstance(step.result, Exception):
                        raise step.result
            except _FAILURES:
                with suppress(*_FAILURES):  # the cluster may be mid-failover: next time, then
                    await self.client.nodes_manager.initialize()
                raise
            result, acknowledged = sent[0].result, sent[1].result
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command("WAIT", self.replicas, WAIT_MILLISECONDS)
                result, acknowledged = await pipe.execute()
        return result, int(acknowledged)

    def require_replicas(self, acknowledged: int) -> None:
        if acknowledged < self.replicas:
            raise NotReplicated(f"{acknowledged} of {self.replicas} replicas hold the write")

    async def _write_script(
        self,
        script: Any,
        script_keys: list[str],
        args: Sequence[str | bytes | float | int],
        *,
        wait: bool = True,
    ) -> Any:
        """A write script, by its digest when no replica has to hold it; else sent whole (a
        promoted replica may not have it cached) and waited for. `wait=False`: what the
        registry's tag-schema index lists can be read again, so no answer waits for it."""
        if not self.replicas or not wait:
            return await script(keys=script_keys, args=args)
        result, acknowledged = await self.replicated(
            script_keys[0], "EVAL", script.script, len(script_keys), *script_keys, *args
        )
        self.require_replicas(acknowledged)
        return result

    async def add(self, repository: str, referrer: Referrer) -> None:
        await self._record(repository, referrer.subject, [referrer], push=True)

    async def add_listed(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> set[str]:
        listed: set[str] = set()
        for first in range(0, len(referrers), _BATCH):
            chunk = referrers[first : first + _BATCH]
            listed.update(await self._record(repository, subject, chunk, push=False))
        return listed

    async def _record(
        self, repository: str, subject: str, referrers: Sequence[Referrer], *, push: bool
    ) -> list[str]:
        """Each referrer's own record (its subject, for a delete by digest) is written first,
        on its own slot: a crash before the subject's step leaves a record of nothing listed,
        which a delete clears; the reverse would leave a listing no delete could find. A push
        knows the subject from the manifest itself and sets it; a listing only fills a record
        that is missing, so no tag-schema index can point a referrer at another subject."""
        args: list[str | bytes | float | int] = ["1" if push else "0", time.time()]
        type_sets = []
        async with self.connection("add"):
            if not push:
                referrers = await self._own(repository, subject, referrers)
                if not referrers:
                    return []
            async with self.client.pipeline(transaction=False) as records:
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
            listed: list[bytes] = await self._write_script(
                self._add,
                [
                    keys.subject_positions(repository, subject),
                    keys.subject_descriptors(repository, subject),
                    keys.subject_all(repository, subject),
                    keys.subject_tombstones(repository, subject),
                    *type_sets,
                ],
                args,
                wait=push,
            )
        return [_text(digest) for digest in listed]

    async def _own(
        self, repository: str, subject: str, referrers: Sequence[Referrer]
    ) -> list[Referrer]:
        """Those a listing of `subject` may record: not recorded under another subject by a
        push (a tag-schema index may list any manifest; where it belongs is its own)."""
        async with self.client.pipeline(transaction=False) as lookups:
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
        async with self.connection("remove"):
            subject, artifact_type = await self.client.hmget(record, ["subject", "artifact_type"])
            if subject is None:
                return
            subject = _text(subject)
            await self._write_script(
                self._remove,
                [
                    keys.subject_descriptors(repository, subject),
                    keys.subject_all(repository, subject),
                    keys.subject_type(repository, subject, _text(artifact_type or b"")),
                    keys.subject_tombstones(repository, subject),
                ],
                [digest, time.time() + TOMBSTONE_SECONDS, int(TOMBSTONE_SECONDS)],
            )

    async def tombstoned(self, repository: str, subject: str, digest: str) -> bool:
        key = keys.subject_tombstones(repository, subject)
        async with self.connection("read"):
            expires = await self.client.zscore(key, digest)
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
        async with self.connection("read"):
            more, last, *descriptors = await self._page(
                keys=[keys.subject_descriptors(repository, subject), *sets], args=[after, limit]
            )
        return Page(descriptors, int(last) if more else None)

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None:
        async with self.connection("read"):
            digest, at = await self.client.hmget(
                keys.tag_sync(repository, subject), ["digest", "at"]
            )
        if digest is None or at is None:
            return None
        return TagSync(_text(digest), float(at))

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        key = keys.tag_sync(repository, subject)
        async with self.connection("write"):
            if sync.digest:
                await self.client.hset(key, mapping={"digest": sync.digest, "at": sync.at})
            else:
                await self.client.delete(key)

    @asynccontextmanager
    async def subject_lock(self, repository: str, subject: str) -> AsyncIterator[None]:
        """redis-py's lock (a token set with NX and an expiry, released only by its owner),
        held on replicas too (see `SubjectLock`) and renewed in the background. The holder runs
        under a deadline just before the lock's last known expiry, pushed on by each renewal:
        a holder that cannot renew in time (Redis gone longer than LOCK_SECONDS), or finds its
        lock taken, is cancelled there and answers IndexUnavailable, before another writer can
        have the lock."""
        lock = SubjectLock(self, keys.subject_lock(repository, subject))
        async with _guard("lock"):
            if not await lock.acquire():
                raise IndexUnavailable(f"{repository} {subject} stayed locked")
        deadline = asyncio.timeout_at(lock.sent_at + LOCK_SECONDS * LOCK_SAFE_SHARE)
        done = asyncio.Event()
        try:
            async with deadline:
                renewal = asyncio.create_task(self._renew(lock, deadline, done))
                try:
                    yield
                finally:
                    done.set()
                    # Ended by the event, not by cancellation: a cancellation landing while
                    # redis-py runs the command can be lost, and the holder then waited forever
                    # on a renewal that kept its lock alive (growing-list soak). Bounded anyway.
                    await asyncio.wait({renewal}, timeout=LOCK_SECONDS)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise IndexUnavailable(f"{repository} {subject}: the lock was lost") from exc
        finally:
            async with _guard("unlock"):
                await lock.release()

    async def _renew(
        self, lock: SubjectLock, deadline: asyncio.Timeout, done: asyncio.Event
    ) -> None:
        """Reset the lock's expiry every third of its life and move the holder's deadline with
        it, until `done`; while Redis does not answer (a failover), keep trying until the
        deadline. A lock found in other hands ends the holder at once."""
        while not done.is_set():
            await _unless(done, LOCK_SECONDS / 3)
            while not done.is_set():
                sent_at = asyncio.get_running_loop().time()
                try:
                    await lock.reacquire()
                except LockNotOwnedError:
                    log.error("redis index: lock %s was lost", lock.name)
                    _move(deadline, sent_at)
                    return
                except (*_FAILURES, IndexUnavailable) as exc:  # a slot not free counts too
                    log.warning("redis index: lock %s not renewed yet: %r", lock.name, exc)
                    await _unless(done, RENEW_RETRY_SECONDS)
                    continue
                if not _move(deadline, sent_at + LOCK_SECONDS * LOCK_SAFE_SHARE):
                    return
                break

    async def ping(self) -> None:
        async with self.connection("ping"):
            await self.client.ping()

    async def close(self) -> None:
        await asyncio.gather(self.client.aclose(), *(s.aclose() for s in self._sentinels))


class SubjectLock(Lock):
    """redis-py's Lock, whose every step takes one of the index's connections, and whose
    acquisition, with replicas asked for, counts only once they hold it: a failover to one of
    them then keeps the lock where it was. Remembers when its last acquisition was sent, the
    earliest its expiry can count from."""

    def __init__(self, index: RedisIndex, name: str) -> None:
        super().__init__(
            index.client,
            name,
            timeout=LOCK_SECONDS,
            sleep=0.01,
            blocking_timeout=LOCK_WAIT_SECONDS,
        )
        self.index = index
        self.key = name
        self.sent_at = 0.0

    async def do_acquire(self, token: str | bytes) -> bool:
        async with self.index.slot("lock"):
            self.sent_at = asyncio.get_running_loop().time()
            if not self.index.replicas:
                return await super().do_acquire(token)
            milliseconds = int(LOCK_SECONDS * 1000)
            taken, acknowledged = await self.index.replicated(
                self.key, "SET", self.key, token, "NX", "PX", milliseconds
            )
            if not taken:
                return False
            try:
                self.index.require_replicas(acknowledged)
            except NotReplicated:
                with suppress(*_FAILURES):
                    await super().do_release(token if isinstance(token, bytes) else token.encode())
                raise
            return True

    async def do_reacquire(self) -> Literal[True]:
        async with self.index.slot("lock renewal"):
            return await super().do_reacquire()

    async def do_release(self, expected_token: bytes) -> None:
        async with self.index.slot("unlock"):
            await super().do_release(expected_token)
