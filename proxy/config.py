"""The one typed settings object, and the parsing of values that need more than a type."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from yarl import URL

from proxy.oci.manifest import MAX_ANNOTATION_BYTES

MiB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the proxy cannot run with."""


class FallbackMode(StrEnum):
    """What the proxy does with the upstream's referrers tag-schema indexes."""

    WRITE = "write"  # read them, and keep them up to date with every attach and delete
    READ = "read"  # only merge what legacy clients wrote
    OFF = "off"  # the index alone


class ManifestCacheMode(StrEnum):
    """Where by-digest manifests are kept for callers whose pull permission is proven."""

    MEMORY = "memory"  # in each process, bounded by manifest_cache_bytes
    REDIS = "redis"  # in the Redis at redis_url, shared by replicas
    OFF = "off"


class LogFormat(StrEnum):
    TEXT = "text"  # for people: one line, request id after the logger name
    JSON = "json"  # for log pipelines: one object per line


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: URL
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    redis_url: str | None = None
    redis_max_connections: int = 64
    redis_ca_file: str | None = None  # verifies a rediss:// server (and the sentinels)
    redis_password_file: str | None = None  # read at start-up; never in the URL then
    redis_cluster: bool = False  # redis_url is a seed node of a Redis Cluster
    redis_sentinel: tuple[tuple[str, int], ...] = ()  # find the master through these
    redis_master: str | None = None  # the name the sentinels know the master by
    redis_wait_replicas: int | None = None  # None: 1 with a cluster or sentinels, else 0
    upstream_ca_file: str | None = None
    upstream_insecure: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_connections: int = 256
    max_manifest_bytes: int = 4 * MiB
    referrers_page_size: int = 100
    fallback_tags: FallbackMode = FallbackMode.WRITE
    fallback_refresh: float = 30.0
    show_fallback_tags: bool = False
    auth_cache_seconds: float = 30.0
    shutdown_grace: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"
    log_format: LogFormat = LogFormat.TEXT
    keep_tags: bool = True
    max_annotation_bytes: int = MAX_ANNOTATION_BYTES
    control_connections: int = 64  # pool of short requests and the proxy's own calls
    min_body_rate: float = 1024.0  # bytes/s a streamed request body must keep up; 0: no floor
    body_rate_window: float = 10.0  # seconds over which min_body_rate is judged
    max_transfers_per_client: int = 64  # per address and per credential; 0: no limit
    tag_write_delay: float = 1.0  # seconds a tag-schema write behind waits for more changes
    tag_index_max_bytes: int = 4 * MiB  # Distribution's manifest limit
    manifest_cache: ManifestCacheMode = ManifestCacheMode.MEMORY
    manifest_cache_seconds: float = 60.0  # the staleness bound for deletes that bypass the proxy
    manifest_cache_bytes: int = 64 * MiB  # all entries together (per process, or in Redis)
    notifications_token: str | None = None  # POST /notifications served only with it
    notifications_credentials_file: str | None = None  # user:password, to read pushed manifests
    cascade_delete: bool = False  # deleting a subject deletes its referrers (weak in the spec)
    workers: int = 1  # processes sharing the listening port (SO_REUSEPORT)

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None or bool(self.redis_sentinel)

    @property
    def replicas_to_wait_for(self) -> int:
        """How many replicas must hold an index write before it counts: one by default where
        replicas take over (a cluster, Sentinel), none for a single server."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster or self.redis_sentinel else 0


def check_pairs(settings: Settings) -> Settings:
    """Settings that only make sense together."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together")
    if settings.tag_index_max_bytes > settings.max_manifest_bytes:
        raise SettingsError(
            "--tag-index-max-bytes cannot pass --max-manifest-bytes: the proxy could not read"
            " back the tag-schema indexes it writes"
        )
    check_redis(settings)
    if settings.manifest_cache is ManifestCacheMode.REDIS and not settings.redis_url:
        raise SettingsError("--manifest-cache redis needs --redis-url")
    if settings.notifications_credentials_file and settings.notifications_token is None:
        raise SettingsError("--notifications-credentials-file needs --notifications-token")
    check_workers(settings)
    return settings


def parse_token(value: str) -> str:
    """A shared secret: long enough not to be guessed, and fit for a header."""
    token = value.strip()
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise SettingsError("must be at least 16 printable ASCII characters without spaces")
    return token


def check_workers(settings: Settings) -> None:
    """Workers share only what lives outside them: the referrers index must be in Redis."""
    if settings.workers == 1:
        return
    if not settings.uses_redis:
        raise SettingsError(
            f"--workers {settings.workers} needs a Redis index (--redis-url or --redis-sentinel):"
            " the embedded index lives in one process, so each worker would list only the"
            " referrers attached through it"
        )
    if settings.listen_port == 0:
        raise SettingsError(
            "--workers above 1 needs a fixed --listen port: with port 0 each worker would get"
            " a port of its own"
        )


def check_redis(settings: Settings) -> None:
    """One way to reach Redis, and options only where they apply."""
    url = URL(settings.redis_url) if settings.redis_url is not None else None
    if bool(settings.redis_sentinel) != (settings.redis_master is not None):
        raise SettingsError("--redis-sentinel and --redis-master go together")
    if settings.redis_sentinel and settings.redis_cluster:
        raise SettingsError("--redis-sentinel and --redis-cluster exclude each other: pick one")
    if settings.redis_sentinel and url is not None and url.host:
        raise SettingsError(
            "with --redis-sentinel the master is found by name: --redis-url may only give the"
            " scheme, user, password and database (e.g. rediss://user@/0), not a host"
        )
    if settings.redis_cluster and (url is None or not url.host):
        raise SettingsError("--redis-cluster needs --redis-url naming a seed node")
    if not settings.uses_redis:
        for name, value in (
            ("--redis-ca-file", settings.redis_ca_file),
            ("--redis-password-file", settings.redis_password_file),
            ("--redis-wait-replicas", settings.redis_wait_replicas),
        ):
            if value is not None:
                raise SettingsError(f"{name} needs --redis-url or --redis-sentinel")
    if settings.redis_ca_file is not None and (url is None or url.scheme != "rediss"):
        raise SettingsError("--redis-ca-file needs a rediss:// --redis-url (TLS)")
    if settings.redis_password_file is not None and url is not None and url.password:
        raise SettingsError("a password in --redis-url and --redis-password-file: give one")


def parse_redis_url(value: str) -> str:
    """`redis://` or `rediss://` (TLS), with an optional user, password and database. The text
    is kept as given: it may hold a password, so it is never echoed in an error."""
    url = URL(value.strip())
    if url.scheme not in ("redis", "rediss"):
        raise SettingsError("must start with redis:// or rediss://")
    if url.path not in ("", "/") and not url.path[1:].isdigit():
        raise SettingsError("may only name a database number as its path")
    return value.strip()


def parse_hosts(value: str) -> tuple[tuple[str, int], ...]:
    """`HOST:PORT[,HOST:PORT...]` (`[V6]:PORT` too)."""
    hosts = []
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise SettingsError(f"expected HOST:PORT[,HOST:PORT...], got {value!r}")
        hosts.append((host, int(port)))
    return tuple(hosts)


def parse_upstream(value: str) -> URL:
    """The upstream is an origin: the proxy forwards `/v2/...` paths to it unchanged."""
    url = URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise SettingsError(f"upstream must be an http:// or https:// URL, got {value!r}")
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise SettingsError(f"upstream must be an origin without path or query, got {value!r}")
    return url.origin()


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"listen address must be HOST:PORT, got {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)
