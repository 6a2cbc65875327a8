"""Health, readiness and metrics against the real registry and Redis, and request ids end to end:
from the client through the proxy's logs to the upstream and back."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.devstack.oci_client import (
    artifact_manifest,
    basic_auth,
    listed_referrers,
    push_blob,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import (
    Redis,
    Registry,
    free_port,
    running_proxy,
    running_registry,
)
from tests.conftest import RestartableRedis, StartProxy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, proxy: str) -> Samples:
    async with http.get(f"{proxy}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((f"referrers_proxy_{name}", frozenset(labels.items())), 0.0)


@dataclass(frozen=True)
class Moved:
    """How far each series moved between two scrapes."""

    before: Samples
    after: Samples

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)

    def requests(self, method: str, route: str, status: int) -> float:
        return self("requests_total", method=method, route=route, status=str(status))


async def moved_once(
    http: aiohttp.ClientSession, proxy: str, before: Samples, done: Callable[[Moved], bool]
) -> Moved:
    """The proxy counts a write when it has read the answer, which can be after the registry
    already shows it: poll (up to 10 s) rather than scrape once."""
    for _ in range(500):
        moved = Moved(before, await scrape(http, proxy))
        if done(moved):
            return moved
        await asyncio.sleep(0.02)
    return moved


async def readiness(http: aiohttp.ClientSession, proxy: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{proxy}/readyz") as response:
        assert response.content_type == "application/json"
        return response.status, orjson.loads(await response.read())


async def readiness_becomes(http: aiohttp.ClientSession, proxy: str, status: int) -> dict[str, Any]:
    """Readiness is remembered for a second, so a change shows within a few."""
    for _ in range(50):
        seen, body = await readiness(http, proxy)
        if seen == status:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"readiness stayed {seen}: {body}")


def proxy_logs(workdir: Path) -> str:
    return "".join(path.read_text() for path in workdir.glob("proxy-*.log"))


async def test_health_and_readiness_ask_for_no_credentials(
    http: aiohttp.ClientSession, start_proxy: StartProxy, auth_registry: Registry
) -> None:
    """In front of a registry that wants a password, 401 on /v2/ still means reachable."""
    proxy = await start_proxy(auth_registry.url)
    async with http.get(f"{proxy}/v2/") as answer:
        assert answer.status == 401
    async with http.get(f"{proxy}/healthz") as alive:
        assert (alive.status, await alive.text()) == (200, "ok")
    assert await readiness(http, proxy) == (
        200,
        {
            "ready": True,
            "checks": {"upstream": "ok", "index": "ok"},
            "notes": {"tag_writes": "ok"},
        },
    )
    samples = await scrape(http, proxy)
    assert value(samples, "requests_total", method="GET", route="base", status="401") == 1


async def test_readiness_follows_redis_down_and_back(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    restartable_redis: RestartableRedis,
) -> None:
    with restartable_redis("redis-1") as redis:
        proxy = await start_proxy(registry.url, redis_url=redis.url)
        assert await readiness(http, proxy) == (
            200,
            {
                "ready": True,
                "checks": {"upstream": "ok", "index": "ok"},
                "notes": {"tag_writes": "ok"},
            },
        )
        image = await push_subject_image(http, proxy, repo)
        sbom = artifact_manifest(image)
        assert (await push_manifest(http, proxy, repo, sbom)).status == 201
        _, listed, _ = await settled_tag_index(http, registry.url, repo, image, [sha256(sbom)])
        assert [d["digest"] for d in listed] == [sha256(sbom)]
        other = artifact_manifest(image, annotations={"n": "2"})
        assert (await push_manifest(http, proxy, repo, other)).status == 201
        redis.process.kill()
        redis.process.wait()
    down = await readiness_becomes(http, proxy, 503)
    assert down == {
        "ready": False,
        "checks": {"upstream": "ok", "index": "unavailable (IndexUnavailable)"},
        "notes": {"tag_writes": "failing for 1 subjects, retrying"},
    }, "the second attach's tag-schema write behind it cannot take the subject lock"
    before = await scrape(http, proxy)
    late = artifact_manifest(image, annotations={"late": "yes"})
    assert (await push_manifest(http, proxy, repo, late)).status == 503
    assert await listed_referrers(http, proxy, repo, image) == [sha256(sbom)]
    moved = Moved(before, await scrape(http, proxy))
    assert moved("index_errors_total", operation="add", error="ConnectionError") == 1
    assert moved("referrers_responses_total", source="tag_schema") == 1
    assert moved("referrers_descriptors_total", source="tag_schema") == 1
    assert moved("referrers_responses_total", source="index") == 0

    with restartable_redis("redis-2"):
        back = await readiness_becomes(http, proxy, 200)
        assert back["checks"] == {"upstream": "ok", "index": "ok"}
        # A new, empty Redis: the write still pending puts the second attach back, so it is
        # neither lost from the index nor from the registry's copy.
        both = [sha256(sbom), sha256(other)]
        assert (await settled_tag_index(http, registry.url, repo, image, both))[0] == 200
        assert await listed_referrers(http, proxy, repo, image) == both


async def test_readiness_follows_the_upstream_down_and_back(
    http: aiohttp.ClientSession, start_proxy: StartProxy, redis_server: Redis, tmp_path: Path
) -> None:
    port = free_port()
    with running_registry(tmp_path / "registry", port=port) as registry:
        proxy = await start_proxy(registry.url, redis_url=redis_server.url)
        assert (await readiness(http, proxy))[0] == 200
    down = await readiness_becomes(http, proxy, 503)
    assert down["checks"] == {"upstream": "unreachable (ClientConnectorError)", "index": "ok"}
    with running_registry(tmp_path / "registry", port=port):
        await readiness_becomes(http, proxy, 200)


async def test_probes_share_one_check_a_second(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry
) -> None:
    """However many probes arrive, the upstream sees at most one GET /v2/ a second."""
    proxy = await start_proxy(registry.url)
    answers = await asyncio.gather(*(readiness(http, proxy) for _ in range(25)))
    assert {status for status, _ in answers} == {200}
    samples = await scrape(http, proxy)
    assert value(samples, "upstream_response_seconds_count", route="base") == 1
    assert value(samples, "requests_total", method="GET", route="ops", status="200") == 25
    began = time.monotonic()
    while value(samples, "upstream_response_seconds_count", route="base") == 1:
        assert time.monotonic() - began < 10, "the check was never asked again"
        await readiness(http, proxy)
        samples = await scrape(http, proxy)
    assert value(samples, "upstream_response_seconds_count", route="base") == 2
    assert time.monotonic() - began > 0.5, "asked again only once the second was over"


async def test_readiness_and_metrics_tell_no_secrets(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry
) -> None:
    port = free_port()
    proxy = await start_proxy(registry.url, redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    async with http.get(f"{proxy}/readyz") as response:
        assert response.status == 503
        body = await response.text()
    assert orjson.loads(body)["checks"]["index"] == "unavailable (IndexUnavailable)"
    async with http.get(f"{proxy}/metrics") as response:
        exposition = await response.text()
    for shown in (body, exposition):
        assert "hunter2" not in shown
        assert str(port) not in shown
        assert "redis://" not in shown


async def test_metrics_count_a_known_sequence(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url)
    blob = os.urandom(1024 * 1024 + 17)
    start = await scrape(http, proxy)
    digest = await push_blob(http, proxy, repo, blob)
    async with http.get(f"{proxy}/v2/{repo}/blobs/{digest}") as pulled:
        assert await pulled.read() == blob
    pushed = Moved(start, await scrape(http, proxy))
    assert pushed.requests("POST", "upload", 202) == 1
    assert pushed.requests("PUT", "upload", 201) == 1
    assert pushed.requests("GET", "blob", 200) == 1
    assert pushed("streamed_bytes_total", direction="to_upstream", route="upload") == len(blob)
    assert pushed("streamed_bytes_total", direction="from_upstream", route="blob") == len(blob)
    assert pushed("upstream_response_seconds_count", route="upload") == 2
    assert pushed("upstream_response_seconds_count", route="blob") == 1
    assert pushed("request_duration_seconds_count", route="upload") == 2

    image = await push_subject_image(http, proxy, repo)
    before = await scrape(http, proxy)
    sbom = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, sbom)).status == 201
    attached = Moved(before, await scrape(http, proxy))
    assert attached.requests("PUT", "manifest", 201) == 1
    assert attached("index_operations_total", operation="add") == 1
    assert attached("index_operations_total", operation="lock") == 1
    assert attached("streamed_bytes_total", direction="to_upstream", route="manifest") == len(sbom)
    # The manifest PUT (made by its keep tag), then the tag-schema index read (404) and written.
    assert attached("upstream_response_seconds_count", route="manifest") == 3

    for _ in range(2):
        assert await listed_referrers(http, proxy, repo, image) == [sha256(sbom)]
    served = Moved(attached.after, await scrape(http, proxy))
    assert served.requests("GET", "referrers", 200) == 2
    assert served("referrers_responses_total", source="index") == 2
    assert served("referrers_descriptors_total", source="index") == 2
    assert served("index_operations_total", operation="page") == 2
    # The pull permission is asked once (a HEAD upstream), then remembered.
    assert served("cache_lookups_total", cache="auth", result="miss") == 1
    assert served("cache_lookups_total", cache="auth", result="hit") == 1
    assert served("upstream_response_seconds_count", route="manifest") == 1
    # The attach wrote the tag-schema index moments ago: no revalidation needed.
    assert served("cache_lookups_total", cache="tag_schema", result="hit") == 2
    assert served("cache_lookups_total", cache="tag_schema", result="miss") == 0
    # The index's marker says so once; then this process remembers it for the window.
    assert served("index_operations_total", operation="tag_sync") == 1
    errors = [v for (name, _), v in served.after.items() if name.endswith("index_errors_total")]
    assert sum(errors) == 0


async def test_each_app_counts_for_itself(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry
) -> None:
    first, second = await start_proxy(registry.url), await start_proxy(registry.url)
    for _ in range(3):
        async with http.get(f"{first}/v2/") as answer:
            assert answer.status == 200
    assert Moved({}, await scrape(http, first)).requests("GET", "base", 200) == 3
    assert Moved({}, await scrape(http, second)).requests("GET", "base", 200) == 0


async def test_request_ids_reach_the_upstream_and_come_back(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    """The registry does not show what headers it got, so a small fake upstream records them."""
    seen: list[tuple[str, str | None]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append((f"{request.method} {request.path}", request.headers.get("X-Request-ID")))
        if request.path == "/v2/":
            return web.json_response({})
        unknown = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        return web.json_response(unknown, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    fake = TestServer(app, host="127.0.0.1")
    await fake.start_server()
    try:
        proxy = await start_proxy(str(fake.make_url("")))
        seen.clear()  # the start-up probe belongs to no request
        async with http.get(f"{proxy}/v2/", headers={"X-Request-ID": "client-7"}) as kept:
            assert kept.headers["X-Request-ID"] == "client-7"
        async with http.get(f"{proxy}/v2/", headers={"X-Request-ID": "two words"}) as replaced:
            fresh = replaced.headers["X-Request-ID"]
        async with http.get(f"{proxy}/v2/") as generated:
            other = generated.headers["X-Request-ID"]
        assert len({fresh, other}) == 2
        assert all(len(made) == 32 and int(made, 16) >= 0 for made in (fresh, other))
        assert seen == [("GET /v2/", "client-7"), ("GET /v2/", fresh), ("GET /v2/", other)]

        seen.clear()
        subject = "sha256:" + "1" * 64
        async with http.get(
            f"{proxy}/v2/a/referrers/{subject}", headers={"X-Request-ID": "refs-1"}
        ) as answer:
            assert answer.status == 200
            assert answer.headers["X-Request-ID"] == "refs-1"
        # The proxy's own calls for this request (pull check, tag-schema read) carry it too.
        assert len(seen) >= 2
        assert {request_id for _, request_id in seen} == {"refs-1"}
    finally:
        await fake.close()


async def test_json_logs_carry_request_ids_and_no_secrets(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    credentials = basic_auth("someone", "hunter2-secret")
    with running_proxy(tmp_path, registry.url, "--log-format", "json") as proxy:
        async with aiohttp.ClientSession(headers=credentials) as http:
            async with http.get(f"{proxy.url}/v2/", headers={"X-Request-ID": "client-1"}) as kept:
                assert kept.headers["X-Request-ID"] == "client-1"
            async with http.get(f"{proxy.url}/v2/", headers={"X-Request-ID": "a\tb"}) as replaced:
                fresh = replaced.headers["X-Request-ID"]
            async with http.post(f"{proxy.url}/v2/{repo}/blobs/uploads/") as started:
                state = started.headers["Location"].split("_state=")[1].split("&")[0]
            image = await push_subject_image(http, proxy.url, repo)
            attached = await push_manifest(
                http,
                proxy.url,
                repo,
                artifact_manifest(image),
                headers={"X-Request-ID": "attach-9"},
            )
            assert attached.status == 201
            assert attached.headers["X-Request-ID"] == "attach-9"
    text = proxy_logs(tmp_path)
    lines = [orjson.loads(line) for line in io.StringIO(text) if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = {
        line["request_id"]: line
        for line in lines
        if line["logger"] == "aiohttp.access" and "request_id" in line
    }
    assert access["client-1"]["target"] == "/v2/"
    assert (access["client-1"]["method"], access["client-1"]["status"]) == ("GET", 200)
    assert access["client-1"]["route"] == "base"
    assert isinstance(access["client-1"]["duration_ms"], float)
    assert access[fresh]["target"] == "/v2/"
    assert access["attach-9"]["status"] == 201
    assert access["attach-9"]["route"] == "manifest"
    recorded = [line for line in lines if str(line["message"]).startswith("recorded sha256:")]
    assert [line["request_id"] for line in recorded] == ["attach-9"]
    assert any("_state=REDACTED" in str(line.get("target")) for line in lines)
    assert state not in text
    assert credentials["Authorization"].split()[1] not in text
    assert "hunter2" not in text
