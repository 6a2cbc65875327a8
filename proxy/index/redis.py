"""The Redis index: shared by every replica, so all of them answer the same."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.index import keys
from proxy.index.base import IndexUnavailable, Page, TagSync, merge_positions
from proxy.manifest import Referrer

log = logging.getLogger(__name__)
POOL_WAIT_SECONDS = 10.0
LOCK_SECONDS = 10.0  # outlives any tag write; bounds how long a crashed holder blocks


@asynccontextmanager
async def _guard(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        log.error("redis index: %s failed: %r", action, exc)
        raise IndexUnavailable(f"index {action} failed: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

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
        record = keys.referrer(repository, referrer.digest)
        async with _guard("add"):
            position = await self._redis.incr(keys.position_counter())
            async with self._redis.pipeline(transaction=True) as tx:
                tx.hset(
                    keys.subject_descriptors(repository, referrer.subject),
                    referrer.digest,
                    referrer.descriptor,
                )
                tx.zadd(
                    keys.subject_all(repository, referrer.subject),
                    {referrer.digest: position},
                    nx=True,
                )
                if referrer.artifact_type is not None:
                    tx.zadd(
                        keys.subject_type(repository, referrer.subject, referrer.artifact_type),
                        {referrer.digest: position},
                        nx=True,
                    )
                tx.hset(record, "subject", referrer.subject)
                if referrer.artifact_type is not None:
                    tx.hset(record, "artifact_type", referrer.artifact_type)
                await tx.execute()

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
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in sets:
                    pipe.zrangebyscore(
                        key, f"({after}", "+inf", start=0, num=limit + 1, withscores=True
                    )
                replies = await pipe.execute()
            runs = [[(int(score), _text(member)) for member, score in reply] for reply in replies]
            chosen, more = merge_positions(runs, limit)
            if not chosen:
                return Page([], None)
            found = await self._redis.hmget(
                keys.subject_descriptors(repository, subject), [digest for _, digest in chosen]
            )
        # A referrer removed between the two reads is simply left out.
        descriptors = [descriptor for descriptor in found if isinstance(descriptor, bytes)]
        return Page(descriptors, chosen[-1][0] if more else None)

    async def tag_sync(self, repository: str, subject: str) -> TagSync | None:
        async with _guard("read"):
            digest, at = await self._redis.hmget(
                keys.tag_sync(repository, subject), ["digest", "at"]
            )
        if digest is None or at is None:
            return None
        return TagSync(_text(digest), float(at))

    async def set_tag_sync(self, repository: str, subject: str, sync: TagSync) -> None:
        async with _guard("write"):
            await self._redis.hset(
                keys.tag_sync(repository, subject), mapping={"digest": sync.digest, "at": sync.at}
            )

    @asynccontextmanager
    async def subject_lock(self, repository: str, subject: str) -> AsyncIterator[None]:
        """redis-py's lock: a token set with NX and an expiry, released only by its owner, so a
        crashed holder blocks the subject for at most LOCK_SECONDS."""
        lock = self._redis.lock(
            keys.subject_lock(repository, subject),
            timeout=LOCK_SECONDS,
            blocking_timeout=LOCK_SECONDS,
            sleep=0.01,
        )
        async with _guard("lock"):
            if not await lock.acquire():
                raise IndexUnavailable(f"{repository} {subject} stayed locked {LOCK_SECONDS} s")
        try:
            yield
        finally:
            async with _guard("unlock"):
                await lock.release()

    async def ping(self) -> None:
        async with _guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
