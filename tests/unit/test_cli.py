import pytest
from yarl import URL

from proxy.cli import SERVE_OPTIONS, settings_from_args
from proxy.config import (
    LogFormat,
    ManifestCacheMode,
    Settings,
    SettingsError,
    parse_listen,
    parse_upstream,
)


def test_defaults_with_only_an_upstream() -> None:
    settings = settings_from_args(["serve", "--upstream", "http://r:5000"], {})
    assert settings == Settings(upstream=URL("http://r:5000"))
    assert settings.redis_url is None


def test_env_vars_are_read_and_flags_win() -> None:
    env = {
        "REFERRERS_PROXY_UPSTREAM": "https://env.example.com",
        "REFERRERS_PROXY_LISTEN": "0.0.0.0:9000",
        "REFERRERS_PROXY_READ_TIMEOUT": "12.5",
        "REFERRERS_PROXY_UPSTREAM_INSECURE": "true",
    }
    settings = settings_from_args(["serve", "--listen", "[::1]:7000"], env)
    assert settings.upstream == URL("https://env.example.com")
    assert (settings.listen_host, settings.listen_port) == ("::1", 7000)
    assert settings.read_timeout == 12.5
    assert settings.upstream_insecure is True


def test_switch_flag() -> None:
    settings = settings_from_args(["serve", "--upstream", "https://r", "--upstream-insecure"], {})
    assert settings.upstream_insecure is True


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["serve"], {}, "--upstream (or REFERRERS_PROXY_UPSTREAM) is required"),
        (["serve", "--upstream", "ftp://r"], {}, "http:// or https://"),
        (["serve", "--upstream", "http://r/v2"], {}, "without path"),
        (["serve", "--upstream", "http://r", "--listen", "nope"], {}, "HOST:PORT"),
        (
            ["serve", "--upstream", "http://r"],
            {"REFERRERS_PROXY_MAX_MANIFEST_BYTES": "-1"},
            "REFERRERS_PROXY_MAX_MANIFEST_BYTES: must be a positive integer",
        ),
        (["serve", "--upstream", "http://r", "--log-level", "loud"], {}, "--log-level"),
        (["serve", "--upstream", "http://r", "--tls-cert", "c.pem"], {}, "go together"),
    ],
)
def test_bad_values_name_their_source(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_args(argv, env)


def test_every_option_is_a_settings_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    for option in SERVE_OPTIONS:
        assert option.dest in fields or option.flag == "listen"


def test_listen_forms() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::]:80") == ("::", 80)


def test_upstream_is_normalised_to_an_origin() -> None:
    assert parse_upstream("https://registry.example.com/") == URL("https://registry.example.com")


def test_log_format_from_flag_or_env() -> None:
    assert settings_from_args(["serve", "--upstream", "http://r"], {}).log_format is LogFormat.TEXT
    env = {"REFERRERS_PROXY_UPSTREAM": "http://r", "REFERRERS_PROXY_LOG_FORMAT": "JSON"}
    assert settings_from_args(["serve"], env).log_format is LogFormat.JSON
    flagged = settings_from_args(["serve", "--log-format", "text"], env)
    assert flagged.log_format is LogFormat.TEXT
    with pytest.raises(SettingsError, match="--log-format: must be text or json"):
        settings_from_args(["serve", "--upstream", "http://r", "--log-format", "xml"], {})


R = ["serve", "--upstream", "http://r"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*R, "--redis-url", "http://cache:6379"], "--redis-url: must start with redis://"),
        ([*R, "--redis-url", "redis://cache/app"], "database number"),
        ([*R, "--redis-cluster"], "--redis-cluster needs --redis-url naming a seed node"),
        ([*R, "--redis-sentinel", "s1:26379"], "--redis-sentinel and --redis-master go together"),
        ([*R, "--redis-master", "orp"], "--redis-sentinel and --redis-master go together"),
        (
            [*R, "--redis-sentinel", "s1:26379", "--redis-master", "orp", "--redis-cluster"],
            "exclude each other",
        ),
        (
            [*R, "--redis-sentinel", "s1:26379", "--redis-master", "m", "--redis-url", "redis://h"],
            "not a host",
        ),
        ([*R, "--redis-sentinel", "s1"], "--redis-sentinel: expected HOST:PORT"),
        (
            [*R, "--redis-ca-file", "ca.pem"],
            "--redis-ca-file needs --redis-url or --redis-sentinel",
        ),
        ([*R, "--redis-password-file", "pw"], "--redis-password-file needs --redis-url"),
        ([*R, "--redis-wait-replicas", "1"], "--redis-wait-replicas needs --redis-url"),
        ([*R, "--redis-url", "redis://h", "--redis-ca-file", "ca.pem"], "needs a rediss://"),
        (
            [*R, "--redis-url", "redis://u:pw@h", "--redis-password-file", "pw"],
            "a password in --redis-url and --redis-password-file",
        ),
    ],
)
def test_contradictory_redis_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        settings_from_args(argv, {})
    assert "pw@" not in str(refused.value)


def test_redis_modes_and_how_many_replicas_a_write_waits_for() -> None:
    single = settings_from_args([*R, "--redis-url", "rediss://u@h:6380/2"], {})
    assert single.uses_redis
    assert single.replicas_to_wait_for == 0
    cluster = settings_from_args([*R, "--redis-url", "redis://seed:7000", "--redis-cluster"], {})
    assert cluster.redis_cluster
    assert cluster.replicas_to_wait_for == 1
    env = {
        "REFERRERS_PROXY_REDIS_SENTINEL": "s1:26379,[::1]:26380",
        "REFERRERS_PROXY_REDIS_MASTER": "orp",
        "REFERRERS_PROXY_REDIS_WAIT_REPLICAS": "0",
    }
    sentinel = settings_from_args(R, env)
    assert sentinel.uses_redis
    assert sentinel.redis_sentinel == (("s1", 26379), ("::1", 26380))
    assert sentinel.replicas_to_wait_for == 0
    assert not settings_from_args(R, {}).uses_redis


def test_manifest_cache_flag_env_and_its_redis_requirement() -> None:
    base = ["serve", "--upstream", "http://r"]
    assert settings_from_args(base, {}).manifest_cache is ManifestCacheMode.MEMORY
    env = {"REFERRERS_PROXY_MANIFEST_CACHE": "OFF"}
    assert settings_from_args(base, env).manifest_cache is ManifestCacheMode.OFF
    redis = [*base, "--manifest-cache", "redis", "--redis-url", "redis://h"]
    assert settings_from_args(redis, env).manifest_cache is ManifestCacheMode.REDIS
    with pytest.raises(SettingsError, match="--manifest-cache redis needs --redis-url"):
        settings_from_args([*base, "--manifest-cache", "redis"], {})
    with pytest.raises(SettingsError, match="--manifest-cache: must be memory, redis or off"):
        settings_from_args([*base, "--manifest-cache", "disk"], {})
    with pytest.raises(SettingsError, match="--manifest-cache-bytes: must be a positive"):
        settings_from_args([*base, "--manifest-cache-bytes", "0"], {})


def test_reindex_imports_native_answers_only_when_asked() -> None:
    from proxy.cli import reindex_from_args

    env = {"REFERRERS_PROXY_UPSTREAM": "http://r:5000"}
    assert not reindex_from_args(["reindex"], env).import_native
    assert reindex_from_args(["reindex", "--import-native"], env).import_native


def test_notifications_token_from_env_and_what_needs_it() -> None:
    base = ["serve", "--upstream", "http://r"]
    assert settings_from_args(base, {}).notifications_token is None
    env = {"REFERRERS_PROXY_NOTIFICATIONS_TOKEN": "0123456789abcdef0123"}
    assert settings_from_args(base, env).notifications_token == "0123456789abcdef0123"
    with pytest.raises(SettingsError, match="REFERRERS_PROXY_NOTIFICATIONS_TOKEN: must be"):
        settings_from_args(base, {"REFERRERS_PROXY_NOTIFICATIONS_TOKEN": "short"})
    credentials = [*base, "--notifications-credentials-file", "/run/secrets/puller"]
    assert settings_from_args(credentials, env).notifications_credentials_file
    with pytest.raises(SettingsError, match="needs --notifications-token"):
        settings_from_args(credentials, {})


def test_workers_flag_env_and_the_redis_index_they_need() -> None:
    redis = ["--redis-url", "redis://r:6379/0"]
    base = ["serve", "--upstream", "http://r:5000"]
    assert settings_from_args(base, {}).workers == 1
    env = {"REFERRERS_PROXY_WORKERS": "3"}
    assert settings_from_args([*base, *redis], env).workers == 3
    assert settings_from_args([*base, *redis, "--workers", "2"], env).workers == 2
    with pytest.raises(SettingsError, match="--workers 2 needs a Redis index") as refused:
        settings_from_args([*base, "--workers", "2"], {})
    assert "each worker would list only the referrers attached through it" in str(refused.value)
    with pytest.raises(SettingsError, match="needs a fixed --listen port"):
        settings_from_args([*base, *redis, "--workers", "2", "--listen", ":0"], {})
    with pytest.raises(SettingsError, match="REFERRERS_PROXY_WORKERS: must be a positive"):
        settings_from_args(base, {"REFERRERS_PROXY_WORKERS": "0"})
