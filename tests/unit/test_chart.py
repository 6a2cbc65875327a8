"""The Helm chart, linted and rendered by Helm's own engine (helm-python-sdk embeds Helm 4 as a
library, so no `helm` binary is needed and nothing skips), every rendered object validated
against the Kubernetes API, and the objects that matter checked per mode."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.unit.test_deploy import (
    CHART,
    CI_VALUES,
    DEPLOY,
    PROXY_CONTAINER,
    Doc,
    assert_valid,
    check_pod,
    merged,
    pod_specs,
)

DEFAULTS: Doc = yaml.safe_load((CHART / "values.yaml").read_text())
INFO = 1  # lint severities: 1 info, 2 warning, 3 error
OPERATOR_GROUP = "monitoring.coreos.com/"  # the Prometheus Operator's CRDs: no schema to check


def values_of(path: Path | None) -> Doc:
    return {} if path is None else yaml.safe_load(path.read_text())


def render(values: Doc, chart: Path = CHART) -> list[Doc]:
    with helm_python.Chart.load(chart) as loaded:
        files = loaded.render(values, name="demo", namespace="registry", is_install=True)
    return [
        doc
        for name, text in files.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def proxy_container(docs: list[Doc]) -> Doc:
    (spec,) = [spec for spec in pod_specs(docs) if _has_proxy(spec)]
    (container,) = [c for c in spec["containers"] if c["name"] == PROXY_CONTAINER]
    return container


def _has_proxy(spec: Doc) -> bool:
    return any(c["name"] == PROXY_CONTAINER for c in spec["containers"])


def env(container: Doc) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def value_files() -> list[Path | None]:
    return [None, *CI_VALUES]


def file_id(path: Path | None) -> str:
    return path.name if path else "default"


@pytest.mark.parametrize("path", value_files(), ids=file_id)
def test_lint_strict_is_clean(path: Path | None) -> None:
    report = helm_python.lint(CHART, values_of(path), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > INFO] == []


@pytest.mark.parametrize("path", value_files(), ids=file_id)
def test_every_rendered_object_matches_the_kubernetes_api(path: Path | None) -> None:
    docs = render(values_of(path))
    assert of_kind(docs, "Deployment"), "something was rendered"
    for doc in docs:
        if not doc["apiVersion"].startswith(OPERATOR_GROUP):
            assert_valid(doc)
    for spec in pod_specs(docs):
        check_pod(spec)


def test_sidecar_defaults_keep_the_registry_on_the_pod_loopback() -> None:
    docs = render({})
    (spec,) = pod_specs(docs)
    names = {c["name"] for c in spec["containers"]}
    assert names == {PROXY_CONTAINER, "registry"}
    (registry,) = [c for c in spec["containers"] if c["name"] == "registry"]
    assert env(registry)["REGISTRY_HTTP_ADDR"].startswith("127.0.0.1:")
    assert env(proxy_container(docs))["REFERRERS_PROXY_UPSTREAM"].startswith("http://127.0.0.1:")
    (service,) = of_kind(docs, "Service")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert of_kind(docs, "PodDisruptionBudget"), "on by default"
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    assert not [doc for doc in docs if doc["apiVersion"].startswith(OPERATOR_GROUP)]
    assert "REFERRERS_PROXY_REDIS_URL" not in env(proxy_container(docs)), "embedded index"


def test_in_chart_redis_is_wired_to_every_replica() -> None:
    docs = render(values_of(CHART / "ci" / "standalone-values.yaml"))
    (deployment,) = [
        d for d in of_kind(docs, "Deployment") if _has_proxy(d["spec"]["template"]["spec"])
    ]
    assert deployment["spec"]["replicas"] == 3
    assert env(proxy_container(docs))["REFERRERS_PROXY_WORKERS"] == "2"
    redis_services = [s for s in of_kind(docs, "Service") if "redis" in s["metadata"]["name"]]
    (redis_service,) = redis_services
    url = env(proxy_container(docs))["REFERRERS_PROXY_REDIS_URL"]
    assert url.startswith(f"redis://{redis_service['metadata']['name']}:")


def test_external_redis_tls_autoscaling_and_monitoring() -> None:
    docs = render(values_of(CHART / "ci" / "standalone-external-redis-values.yaml"))
    container = proxy_container(docs)
    variables = env(container)
    assert variables["REFERRERS_PROXY_REDIS_URL"] == {
        "secretKeyRef": {"name": "referrers-proxy-redis", "key": "redis-url"}
    }, "the URL (it may hold a password) comes from the Secret, never from values"
    assert variables["REFERRERS_PROXY_TLS_CERT"].startswith("/etc/referrers-proxy/tls/")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True
    (spec,) = pod_specs(docs)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "referrers-proxy-tls"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert of_kind(docs, "HorizontalPodAutoscaler")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert not [s for s in of_kind(docs, "Service") if "redis" in s["metadata"]["name"]]


def test_external_sentinel_set_with_secret_references() -> None:
    docs = render(values_of(CHART / "ci" / "standalone-redis-sentinel-values.yaml"))
    container = proxy_container(docs)
    variables = env(container)
    assert variables["REFERRERS_PROXY_REDIS_SENTINEL"] == ",".join(
        f"redis-node-{n}.redis-headless.redis.svc:26379" for n in range(3)
    )
    assert variables["REFERRERS_PROXY_REDIS_MASTER"] == "mymaster"
    assert variables["REFERRERS_PROXY_REDIS_URL"] == "rediss://default@/0"
    password = variables["REFERRERS_PROXY_REDIS_PASSWORD_FILE"]
    ca = variables["REFERRERS_PROXY_REDIS_CA_FILE"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert password == mounts["redis-password"]["mountPath"] + "/redis-password"
    assert ca == mounts["redis-ca"]["mountPath"] + "/ca.crt"
    assert all(m["readOnly"] for m in mounts.values())
    (spec,) = pod_specs(docs)
    volumes = {v["name"]: v["secret"] for v in spec["volumes"]}
    assert volumes["redis-password"]["secretName"] == "redis"
    assert volumes["redis-ca"]["secretName"] == "redis-crt"
    assert "REFERRERS_PROXY_REDIS_CLUSTER" not in variables


def test_external_cluster_from_a_secret() -> None:
    variables = env(
        proxy_container(render(values_of(CHART / "ci" / "standalone-redis-cluster-values.yaml")))
    )
    assert variables["REFERRERS_PROXY_REDIS_URL"] == {
        "secretKeyRef": {"name": "referrers-proxy-redis-cluster", "key": "seed-url"}
    }
    assert variables["REFERRERS_PROXY_REDIS_CLUSTER"] == "true"
    assert variables["REFERRERS_PROXY_REDIS_WAIT_REPLICAS"] == "1"
    assert "REFERRERS_PROXY_REDIS_SENTINEL" not in variables


SENTINEL = {"hosts": ["s:26379"], "masterName": "mymaster"}


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": 2},
        {"replicaCount": "two"},
        {"workers": 2},
        {"workers": 0},
        {"workers": None},  # was rendered as an empty env var: a crash-looping pod
        {"mode": "standalone"},
        {"mode": "elsewhere"},
        {"autoscaling": {"enabled": True}},
        {"redis": {"enabled": True, "url": "redis://x:6379/0"}},
        {"redis": {"enabled": False, "sentinel": {"hosts": ["s:26379"]}}},
        {"redis": {"enabled": False, "sentinel": {"masterName": "mymaster"}}},
        {"redis": {"enabled": False, "sentinel": {"hosts": ["s"], "masterName": "m"}}},
        {"redis": {"enabled": False, "sentinel": SENTINEL, "cluster": True, "url": "redis://x"}},
        {"redis": {"enabled": True, "sentinel": SENTINEL}},
        {"redis": {"enabled": False, "sentinel": SENTINEL, "url": "redis://master:6379/0"}},
        {"redis": {"enabled": False, "cluster": True}},
        {"redis": {"enabled": True, "cluster": True}},
        {"redis": {"enabled": False, "url": "redis://x:6379", "caSecret": "ca"}},
        {"redis": {"enabled": False, "url": "redis://u:pw@x:6379", "passwordSecret": "pw"}},
        {"redis": {"enabled": False, "url": "unix:///run/redis.sock"}},
        {"redis": {"enabled": False, "url": "redis://x", "waitReplicas": -1}},
    ],
    ids=str,
)
def test_the_schema_refuses_bad_values(override: Doc) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render(override)
    report = helm_python.lint(CHART, override, strict=True)
    assert [m for m in report["messages"] if m["severity"] > INFO]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"replicaCount": 2}, "more than one replica needs Redis"),
        ({"workers": 2}, "more than one worker needs Redis"),
        ({"mode": "standalone"}, "mode standalone needs upstream"),
        ({"upstream": "http://elsewhere:5000"}, "leave upstream empty"),
        (
            {"redis": {"sentinel": {"hosts": ["s:26379"]}}},
            "redis.sentinel.hosts and redis.sentinel.masterName go together",
        ),
        (
            {"redis": {"sentinel": SENTINEL, "cluster": True, "url": "redis://x"}},
            "not with redis.cluster or redis.enabled",
        ),
        ({"front": {"enabled": True}, "tls": {"secretName": "t"}}, "leave tls.secretName empty"),
        (
            {"mode": "standalone", "upstream": "https://r.example", "front": {"enabled": True}},
            "front.enabled needs sidecar mode or an http:// upstream",
        ),
    ],
    ids=str,
)
def test_the_templates_refuse_what_the_schema_would_catch_first(
    override: Doc, message: str, tmp_path: Path
) -> None:
    """The templates' own `fail` checks, for installs that skip schema validation."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    with pytest.raises(helm_python.HelmError, match=message):
        render(merged({}, override), chart)


def _front(docs: list[Doc]) -> Doc | None:
    (spec,) = [spec for spec in pod_specs(docs) if _has_proxy(spec)]
    return next((c for c in spec["containers"] if c["name"] == "front"), None)


def test_the_front_takes_the_service_and_runs_the_shipped_nginx_config() -> None:
    plain = render({})
    assert _front(plain) is None
    assert not of_kind(plain, "ConfigMap")
    (service,) = of_kind(plain, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    docs = render({"front": {"enabled": True}})
    (service,) = of_kind(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "front"
    front = _front(docs)
    assert front is not None
    assert env(front) == {
        "ORP_REGISTRY": "127.0.0.1:5000",
        "ORP_PROXY": "127.0.0.1:8080",
        "ORP_LISTEN": "0.0.0.0:8081",
    }
    assert front["ports"] == [{"name": "front", "containerPort": 8081}]
    assert front["securityContext"]["readOnlyRootFilesystem"] is True
    (config,) = of_kind(docs, "ConfigMap")
    shipped = (DEPLOY / "nginx" / "front.conf.template").read_text()
    assert config["data"]["front.conf.template"].strip() == shipped.strip()
    mounts = {m["mountPath"] for m in front["volumeMounts"]}
    assert mounts == {"/etc/nginx/templates", "/etc/nginx/conf.d", "/tmp"}


@pytest.mark.parametrize(
    ("upstream", "address"),
    [
        ("http://registry.internal:5000", "registry.internal:5000"),
        ("http://r.example", "r.example:80"),
    ],
)
def test_a_standalone_front_reaches_the_upstream_itself(upstream: str, address: str) -> None:
    docs = render({"mode": "standalone", "upstream": upstream, "front": {"enabled": True}})
    front = _front(docs)
    assert front is not None
    assert env(front)["ORP_REGISTRY"] == address
