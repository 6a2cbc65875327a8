"""The Redis client the settings describe: one server, a Redis Cluster reached through a seed
node, or the master that Sentinels name (followed across failovers).

The URL gives the scheme (`rediss://` for TLS), the ACL user and password, and the database;
a password file, when given, supplies the password instead. Nothing here logs a URL or a
password: redis-py's errors name hosts and ports only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from yarl import URL

from proxy.config import Settings
from proxy.index.redis import RedisIndex

SOCKETS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}


def _no_retry() -> Retry:
    """A failure surfaces at once: the request answers 503 (its client retries) or reads fall
    back, instead of being held through redis-py's backoff (its client default since 6.0). The
    cluster client keeps its own retries: they follow the cluster's new layout after a failover."""
    return Retry(NoBackoff(), 0)


def connection_options(settings: Settings) -> dict[str, Any]:
    """What every connection (to a server, a cluster node, a master or a Sentinel) is opened
    with, from the URL and the files beside it."""
    url = URL(settings.redis_url or "redis://")
    options: dict[str, Any] = dict(SOCKETS)
    if url.user:
        options["username"] = url.user
    if url.password:
        options["password"] = url.password
    if settings.redis_password_file is not None:
        options["password"] = Path(settings.redis_password_file).read_text().strip()
    if url.scheme == "rediss":
        options["ssl"] = True
        options["ssl_cert_reqs"] = "required"
        if settings.redis_ca_file is not None:
            options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def _database(settings: Settings) -> int:
    path = URL(settings.redis_url or "redis://").path.strip("/")
    return int(path) if path else 0


def open_redis_index(settings: Settings) -> RedisIndex:
    options = connection_options(settings)
    limit = settings.redis_max_connections
    client: aioredis.Redis | RedisCluster
    sentinels: list[aioredis.Redis] = []
    if settings.redis_master is not None:
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis 8.2
            list(settings.redis_sentinel),
            sentinel_kwargs=options,
            **options,
        )
        client = sentinel.master_for(
            settings.redis_master,
            db=_database(settings),
            retry=_no_retry(),
            max_connections=limit,
            health_check_interval=15,
        )
        # A copy: redis-py reorders that list in place while concurrent lookups interleave,
        # and can lose a client from it, which then would never be closed.
        sentinels = list(sentinel.sentinels)
    elif settings.redis_cluster:
        url = URL(settings.redis_url or "")
        client = RedisCluster(
            host=url.host, port=url.port or 6379, max_connections=limit, **options
        )
    else:
        url = URL(settings.redis_url or "")
        client = aioredis.Redis(
            host=url.host or "localhost",
            port=url.port or 6379,
            db=_database(settings),
            max_connections=limit,
            health_check_interval=15,
            retry=_no_retry(),
            **options,
        )
    return RedisIndex(
        client,
        replicas=settings.replicas_to_wait_for,
        max_connections=limit,
        sentinels=sentinels,
    )
