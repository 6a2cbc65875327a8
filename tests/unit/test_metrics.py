from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.index import IndexUnavailable
from proxy.metrics import (
    FROM_UPSTREAM,
    TO_UPSTREAM,
    Metrics,
    error_label,
    method_label,
)

DIGEST = "sha256:" + "a" * 64


def test_unknown_methods_share_one_label() -> None:
    assert method_label("PATCH") == "PATCH"
    assert method_label("BREW") == "other"
    assert method_label("get") == "other"


def test_error_label_names_the_cause_from_a_fixed_set() -> None:
    wrapped = IndexUnavailable("index add failed")
    wrapped.__cause__ = RedisConnectionError("Error 111 connecting to 127.0.0.1:6379")
    assert error_label(wrapped) == "ConnectionError"
    assert error_label(IndexUnavailable("locked")) == "IndexUnavailable"
    assert error_label(KeyError("secret-looking-name")) == "other"


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"referrers_proxy_{name}", labels)


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics.create(), Metrics.create()
    first.streamed("/v2/a/blobs/uploads/u", TO_UPSTREAM, 1000)
    first.streamed("/v2/a/blobs/uploads/u", TO_UPSTREAM, 24)
    assert _value(first, "streamed_bytes_total", direction=TO_UPSTREAM, route="upload") == 1024
    assert _value(second, "streamed_bytes_total", direction=TO_UPSTREAM, route="upload") is None


def test_helpers_count_what_they_are_told() -> None:
    metrics = Metrics.create()
    assert _value(metrics, "cache_lookups_total", cache="auth", result="hit") == 0
    metrics.cache_lookup("auth", True)
    metrics.cache_lookup("auth", False)
    metrics.cache_lookup("auth", True)
    metrics.served("index", 3)
    metrics.served("index", 0)
    metrics.streamed(f"/v2/a/blobs/{DIGEST}", FROM_UPSTREAM, 7)
    assert _value(metrics, "cache_lookups_total", cache="auth", result="hit") == 2
    assert _value(metrics, "cache_lookups_total", cache="auth", result="miss") == 1
    assert _value(metrics, "cache_lookups_total", cache="tag_schema", result="miss") == 0
    assert _value(metrics, "referrers_responses_total", source="index") == 2
    assert _value(metrics, "referrers_descriptors_total", source="index") == 3
    assert _value(metrics, "streamed_bytes_total", direction=FROM_UPSTREAM, route="blob") == 7
    text = metrics.exposition().decode()
    line = 'referrers_proxy_streamed_bytes_total{direction="from_upstream",route="blob"} 7.0'
    assert line in text.splitlines()
