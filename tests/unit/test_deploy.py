"""What can be checked of deploy/ and helm/ without a Docker engine or a cluster.

Plain manifests are validated against the Kubernetes API schemas (kubernetes-validate), the
chart's values against values.schema.json, every YAML file with yamllint. The chart's templates
are linted and rendered by Helm's own engine in test_chart.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
CHART = ROOT / "helm"
KUBERNETES_VERSION = "1.30"
PROXY_CONTAINER = "referrers-proxy"

Doc = dict[str, Any]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def assert_valid(doc: Doc) -> None:
    """Validate against the API schema, failing with one line instead of the whole schema."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {error.message}")


def pod_specs(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["spec"]["template"]["spec"]


def merged(base: Doc, override: Doc) -> Doc:
    """Values as helm merges them: maps key by key, everything else replaced."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


# --- YAML --------------------------------------------------------------------------------------

YAMLLINT = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))


def linted_files() -> list[Path]:
    found = sorted([*DEPLOY.rglob("*.yaml"), *CHART.rglob("*.yaml"), ROOT / ".yamllint.yaml"])
    return [path for path in found if not YAMLLINT.is_file_ignored(rel(path))]


def test_yamllint_covers_deploy_and_values_but_not_templates() -> None:
    names = {rel(path) for path in linted_files()}
    assert {"deploy/compose.yaml", "helm/values.yaml", "helm/Chart.yaml"} <= names
    assert not any(name.startswith("helm/templates/") for name in names)


@pytest.mark.parametrize("path", linted_files(), ids=rel)
def test_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems)


# --- plain Kubernetes manifests ------------------------------------------------------------------


def test_both_deployments_are_there() -> None:
    assert {path.parent.name for path in manifest_files()} == {"sidecar", "standalone"}


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_matches_the_kubernetes_api(path: Path) -> None:
    for doc in load_docs(path):
        assert_valid(doc)


def check_pod(spec: Doc) -> None:
    """Non-root, no privilege escalation, read-only root FS; the proxy probed on its endpoints."""
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not container["image"].endswith(":latest"), container["name"]
        assert ":" in container["image"], container["name"]
        assert "resources" in container, container["name"]
        if container["name"] == PROXY_CONTAINER:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_pods_are_locked_down(path: Path) -> None:
    for spec in pod_specs(load_docs(path)):
        check_pod(spec)


def env_of(container: Doc) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_sidecar_registry_is_reachable_only_through_the_proxy() -> None:
    docs = load_docs(MANIFESTS / "sidecar" / "registry.yaml")
    (spec,) = pod_specs(docs)
    containers = {container["name"]: container for container in spec["containers"]}
    assert env_of(containers["registry"])["REGISTRY_HTTP_ADDR"] == "127.0.0.1:5000"
    assert env_of(containers[PROXY_CONTAINER])["REFERRERS_PROXY_UPSTREAM"] == (
        "http://127.0.0.1:5000"
    )
    (service,) = [doc for doc in docs if doc["kind"] == "Service"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in containers[PROXY_CONTAINER]["ports"]}
    assert "ports" not in containers["registry"]


def test_standalone_replicas_share_the_redis_beside_them() -> None:
    proxy = load_docs(MANIFESTS / "standalone" / "referrers-proxy.yaml")
    redis = load_docs(MANIFESTS / "standalone" / "redis.yaml")
    (config,) = [doc for doc in proxy if doc["kind"] == "ConfigMap"]
    (deployment,) = [doc for doc in proxy if doc["kind"] == "Deployment"]
    (redis_service,) = [doc for doc in redis if doc["kind"] == "Service"]
    assert deployment["spec"]["replicas"] > 1
    assert config["data"]["REFERRERS_PROXY_REDIS_URL"] == (
        f"redis://{redis_service['metadata']['name']}:6379/0"
    )
    assert config["data"]["REFERRERS_PROXY_UPSTREAM"].startswith(("http://", "https://"))


# --- Helm chart values ---------------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def schema_errors(values: Doc) -> list[str]:
    return [error.message for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_default_values_match_the_schema() -> None:
    assert schema_errors(VALUES) == []


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda path: path.name)
def test_example_values_match_the_schema(path: Path) -> None:
    assert schema_errors(merged(VALUES, yaml.safe_load(path.read_text()))) == []


def test_examples_cover_both_modes_and_both_redis_kinds() -> None:
    examples = [merged(VALUES, yaml.safe_load(path.read_text())) for path in CI_VALUES]
    assert {values["mode"] for values in examples} == {"sidecar", "standalone"}
    assert any(values["redis"]["enabled"] for values in examples)
    assert any(values["redis"]["existingSecret"] for values in examples)


STANDALONE = {"mode": "standalone", "upstream": "https://registry.example.com"}


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": "two"},
        {"replicaCount": 0},
        {"mode": "bogus"},
        {"mode": "standalone"},
        {**STANDALONE, "upstream": "registry.example.com"},
        {**STANDALONE, "upstream": "https://registry.example.com/v2"},
        {"upstream": "http://elsewhere:5000"},
        {"replicaCount": 2},
        {"autoscaling": {"enabled": True}},
        {"redis": {"enabled": True, "url": "redis://r:6379/0"}},
        {"redis": {"url": "redis://r:6379/0", "existingSecret": "redis"}},
        {"redis": {"url": "http://r:6379"}},
        {"image": {"tag": "latest"}},
        {"logFormat": "xml"},
        {"replicas": 2},
    ],
    ids=json.dumps,
)
def test_schema_rejects_bad_values(override: Doc) -> None:
    assert schema_errors(merged(VALUES, override))


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": 2, "redis": {"enabled": True}},
        {"replicaCount": 2, "redis": {"url": "redis://r:6379/0"}},
        {"autoscaling": {"enabled": True}, "redis": {"existingSecret": "redis"}},
        {**STANDALONE, "upstream": "http://registry.registry.svc:5000"},
    ],
    ids=json.dumps,
)
def test_schema_accepts_good_values(override: Doc) -> None:
    assert schema_errors(merged(VALUES, override)) == []


def test_default_values_lock_the_pods_down() -> None:
    assert VALUES["podSecurityContext"]["runAsNonRoot"] is True
    assert VALUES["securityContext"]["runAsNonRoot"] is True
    assert VALUES["securityContext"]["allowPrivilegeEscalation"] is False
    assert VALUES["securityContext"]["readOnlyRootFilesystem"] is True
    assert VALUES["resources"]["requests"]
    assert VALUES["resources"]["limits"]


def template_blocks() -> dict[str, str]:
    """Each container the chart defines, by the template or helper that holds it."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    blocks = {
        name.split('"', 1)[0]: body
        for name, body in (block.split("\n", 1) for block in helpers.split('{{- define "')[1:])
    }
    return {
        "proxy": blocks["referrers-proxy.proxyContainer"],
        "registry": blocks["referrers-proxy.registryContainer"],
        "redis": (CHART / "templates" / "redis.yaml").read_text(),
    }


@pytest.mark.parametrize(("name", "source"), template_blocks().items())
def test_every_chart_container_gets_the_security_context(name: str, source: str) -> None:
    assert "toYaml .Values.securityContext" in source


def test_chart_probes_and_scrapes_the_proxy_endpoints() -> None:
    proxy = template_blocks()["proxy"]
    assert "path: /healthz" in proxy.split("readinessProbe:")[0].split("livenessProbe:")[1]
    assert "path: /readyz" in proxy.split("readinessProbe:")[1]
    assert "path: /metrics" in (CHART / "templates" / "servicemonitor.yaml").read_text()


# --- the image -----------------------------------------------------------------------------------

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    return [
        line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")
    ]


def test_image_bases_are_pinned() -> None:
    args = dict(arg.split("=", 1) for arg in instructions("ARG") if "=" in arg)
    for base in instructions("FROM"):
        image = base.split()[0]
        if image.startswith("${"):
            image = args[image.strip("${}")]
        name, _, tag = image.rpartition(":")
        assert name, image
        assert tag not in ("", "latest"), image


def test_image_runs_as_a_numeric_non_root_user() -> None:
    *_, user = instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_image_listens_on_all_addresses_and_checks_its_health() -> None:
    assert "REFERRERS_PROXY_LISTEN=0.0.0.0:8080" in DOCKERFILE
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE
    assert instructions("EXPOSE") == ["8080"]
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/opt/healthcheck.py" in healthcheck
    assert "COPY deploy/healthcheck.py /opt/healthcheck.py" in DOCKERFILE


def test_dockerignore_lets_every_copied_path_in() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for copy_args in instructions("COPY"):
        if copy_args.startswith("--from"):
            continue
        *sources, _ = copy_args.split()
        for source in sources:
            assert source in allowed, source
            assert (ROOT / source).exists(), source


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_healthcheck(port: int) -> int:
    env = {"REFERRERS_PROXY_LISTEN": f"0.0.0.0:{port}"}
    script = str(DEPLOY / "healthcheck.py")
    return subprocess.run([sys.executable, script], env=env, capture_output=True).returncode


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_healthcheck_script_asks_healthz(status: int, code: int) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            assert run_healthcheck(server.server_address[1]) == code
        finally:
            server.shutdown()
            thread.join()


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as server:
        port = server.server_address[1]
    assert run_healthcheck(port) == 1


# --- docker compose ------------------------------------------------------------------------------


def test_compose_example_wires_registry_redis_and_proxy() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["registry"]["image"] == "registry:2.8"
    assert services["redis"]["image"] == "redis:7-alpine"
    proxy = services["proxy"]
    build = proxy["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = proxy["environment"]
    assert env["REFERRERS_PROXY_UPSTREAM"] == "http://registry:5000"
    assert env["REFERRERS_PROXY_REDIS_URL"] == "redis://redis:6379/0"
    assert proxy["read_only"] is True
    assert set(proxy["depends_on"]) == {"registry", "redis"}
    assert "ports" not in services["registry"]


def test_compose_front_is_opt_in_and_runs_the_shipped_nginx_config() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    front = services["front"]
    assert front["profiles"] == ["front"]
    assert front["environment"] == {
        "ORP_REGISTRY": "registry:5000",
        "ORP_PROXY": "proxy:8080",
        "ORP_LISTEN": "8081",
    }
    (mount,) = front["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx" / "front.conf.template"
    assert (target, mode) == ("/etc/nginx/templates/front.conf.template", "ro")
    assert front["read_only"] is True
    assert set(front["tmpfs"]) == {"/tmp", "/etc/nginx/conf.d"}


def test_the_httproute_example_routes_what_the_nginx_front_routes() -> None:
    """Every (method, path) the HTTPRoute sends to the proxy matches the nginx map's proxy rule
    for it, and each nginx proxy rule has its HTTPRoute matches."""
    import re

    route = yaml.safe_load((DEPLOY / "gateway" / "httproute.yaml").read_text())
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    to_proxy, rest = route["spec"]["rules"]
    assert [b["name"] for b in to_proxy["backendRefs"]] == ["referrers-proxy"]
    assert rest["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    nginx = (DEPLOY / "nginx" / "front.conf.template").read_text()
    table = re.findall(r'"~\^\(([A-Z|]+)\) (\S+)"\s+orp_proxy;', nginx)
    expected = {(method, "^" + path) for methods, path in table for method in methods.split("|")}
    listed = set()
    for match in to_proxy["matches"]:
        assert match["path"]["type"] == "RegularExpression"
        listed.add((match["method"], match["path"]["value"]))
    assert listed == expected
    assert len(expected) == 8
