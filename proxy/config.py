"""The one typed settings object, and the parsing of values that need more than a type."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from yarl import URL

from proxy.manifest import MAX_ANNOTATION_BYTES

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
    manifest_cache: ManifestCacheMode = ManifestCacheMode.MEMORY
    manifest_cache_seconds: float = 60.0  # the staleness bound for deletes that bypass the proxy
    manifest_cache_bytes: int = 64 * MiB  # all entries together (per process, or in Redis)


def check_pairs(settings: Settings) -> Settings:
    """Settings that only make sense together."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together")
    if settings.manifest_cache is ManifestCacheMode.REDIS and not settings.redis_url:
        raise SettingsError("--manifest-cache redis needs --redis-url")
    return settings


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
