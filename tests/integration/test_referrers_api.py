"""The Referrers API through the proxy, in front of a real Distribution 2.8, on both indexes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from yarl import URL

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    EMPTY_CONFIG,
    EMPTY_JSON,
    INDEX,
    MANIFEST,
    artifact_manifest,
    push_blob,
    push_image,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, free_port
from tests.conftest import StartProxy

ZERO = "sha256:" + "0" * 64
SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


@pytest.fixture(params=["embedded", "redis"])
async def index_proxy(
    request: pytest.FixtureRequest, start_proxy: StartProxy, registry: Registry
) -> AsyncIterator[str]:
    """A proxy on each kind of index; Redis is flushed so each test starts empty."""
    if request.param == "embedded":
        yield await start_proxy(registry.url)
        return
    redis_server: Redis = request.getfixturevalue("redis_server")
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    yield await start_proxy(registry.url, redis_url=redis_server.url)


async def referrers(
    http: aiohttp.ClientSession, proxy: str, repo: str, subject: str, **params: Any
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with http.get(f"{proxy}/v2/{repo}/referrers/{subject}", params=params) as response:
        body = await response.read()
        return response, orjson.loads(body) if response.status == 200 else {"raw": body}


async def attach(
    http: aiohttp.ClientSession, proxy: str, repo: str, subject: bytes, **kwargs: Any
) -> bytes:
    manifest = artifact_manifest(subject, **kwargs)
    response = await push_manifest(http, proxy, repo, manifest)
    assert response.status == 201
    assert response.headers["OCI-Subject"] == sha256(subject)
    return manifest


async def test_attach_answers_oci_subject_and_lists_the_exact_descriptor(
    http: aiohttp.ClientSession, index_proxy: str, registry: Registry, repo: str
) -> None:
    image = await push_subject_image(http, index_proxy, repo)
    annotations = {"org.opencontainers.image.created": "2026-11-23T00:00:00Z", "x": "y"}
    sbom = await attach(http, index_proxy, repo, image, annotations=annotations)
    response, index = await referrers(http, index_proxy, repo, sha256(image))
    assert response.status == 200
    assert response.headers["Content-Type"] == INDEX
    assert "OCI-Filters-Applied" not in response.headers
    assert index == {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": sha256(sbom),
                "size": len(sbom),
                "artifactType": SBOM,
                "annotations": annotations,
            }
        ],
    }
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{sha256(sbom)}", headers={"Accept": MANIFEST}
    ) as stored:
        assert await stored.read() == sbom, "the upstream must hold the exact bytes pushed"


async def test_artifact_type_rules(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    image = await push_subject_image(http, index_proxy, repo)
    explicit = await attach(http, index_proxy, repo, image, artifact_type=SIGNATURE)
    from_config = await attach(http, index_proxy, repo, image, artifact_type=None)
    index_referrer = orjson.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [],
            "subject": {"mediaType": MANIFEST, "digest": sha256(image), "size": len(image)},
        }
    )
    response = await push_manifest(http, index_proxy, repo, index_referrer, media_type=INDEX)
    assert response.status == 201
    assert response.headers["OCI-Subject"] == sha256(image)
    _, index = await referrers(http, index_proxy, repo, sha256(image))
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert by_digest[sha256(explicit)]["artifactType"] == SIGNATURE
    assert by_digest[sha256(from_config)]["artifactType"] == EMPTY_CONFIG
    assert by_digest[sha256(index_referrer)] == {
        "mediaType": INDEX,
        "digest": sha256(index_referrer),
        "size": len(index_referrer),
    }


async def test_artifact_type_filter_one_or_several(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    image = await push_subject_image(http, index_proxy, repo)
    sbom = await attach(http, index_proxy, repo, image, artifact_type=SBOM)
    signature = await attach(http, index_proxy, repo, image, artifact_type=SIGNATURE)
    await attach(http, index_proxy, repo, image, artifact_type="application/vnd.other")
    response, index = await referrers(http, index_proxy, repo, sha256(image), artifactType=SBOM)
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in index["manifests"]] == [sha256(sbom)]
    async with http.get(
        f"{index_proxy}/v2/{repo}/referrers/{sha256(image)}",
        params=[("artifactType", SBOM), ("artifactType", SIGNATURE)],
    ) as both:
        assert both.headers["OCI-Filters-Applied"] == "artifactType"
        listed = [d["digest"] for d in orjson.loads(await both.read())["manifests"]]
    assert listed == [sha256(sbom), sha256(signature)]
    response, index = await referrers(
        http, index_proxy, repo, sha256(image), artifactType="application/vnd.none"
    )
    assert (response.status, index["manifests"]) == (200, [])


@pytest.mark.parametrize(
    "subject", [ZERO, "sha256:" + "a" * 64, "sha512:" + "b" * 128], ids=["zero", "256", "512"]
)
async def test_unknown_subjects_and_repositories_get_an_empty_index(
    http: aiohttp.ClientSession, proxy: str, subject: str
) -> None:
    response, index = await referrers(http, proxy, "never/pushed", subject)
    assert response.status == 200
    assert response.headers["Content-Type"] == INDEX
    assert index == {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}


@pytest.mark.parametrize(
    ("repo_name", "digest", "code"),
    [
        ("ok", "sha256:abc", "DIGEST_INVALID"),
        ("ok", "sha256:" + "A" * 64, "DIGEST_INVALID"),
        ("ok", "not-a-digest", "DIGEST_INVALID"),
        ("Upper/Case", ZERO, "NAME_INVALID"),
        ("a" * 256, ZERO, "NAME_INVALID"),
        ("bad__-name", ZERO, "NAME_INVALID"),
    ],
)
async def test_bad_names_and_digests_are_400(
    http: aiohttp.ClientSession, proxy: str, repo_name: str, digest: str, code: str
) -> None:
    response, body = await referrers(http, proxy, repo_name, digest)
    assert response.status == 400
    assert orjson.loads(body["raw"])["errors"][0]["code"] == code


async def test_referrers_never_cross_repositories(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    image = await push_subject_image(http, index_proxy, repo)
    other = f"{repo}/nested"
    await push_subject_image(http, index_proxy, other)
    await attach(http, index_proxy, repo, image)
    _, index = await referrers(http, index_proxy, other, sha256(image))
    assert index["manifests"] == []


async def test_deleted_referrers_disappear_but_a_deleted_subject_keeps_them(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    image = await push_subject_image(http, index_proxy, repo)
    kept = await attach(http, index_proxy, repo, image, artifact_type=SBOM)
    gone = await attach(http, index_proxy, repo, image, artifact_type=SIGNATURE)
    async with http.delete(f"{index_proxy}/v2/{repo}/manifests/{sha256(gone)}") as deleted:
        assert deleted.status == 202
    for params in ({}, {"artifactType": SIGNATURE}):
        _, index = await referrers(http, index_proxy, repo, sha256(image), **params)
        assert sha256(gone) not in [d["digest"] for d in index["manifests"]]
    async with http.delete(f"{index_proxy}/v2/{repo}/manifests/{sha256(image)}") as deleted:
        assert deleted.status == 202
    _, index = await referrers(http, index_proxy, repo, sha256(image))
    assert [d["digest"] for d in index["manifests"]] == [sha256(kept)]


async def test_subject_that_does_not_exist_yet_is_accepted(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    await push_blob(http, index_proxy, repo, EMPTY_JSON)
    future_subject = b'{"not":"pushed yet"}'
    referrer = await attach(http, index_proxy, repo, future_subject)
    _, index = await referrers(http, index_proxy, repo, sha256(future_subject))
    assert [d["digest"] for d in index["manifests"]] == [sha256(referrer)]


async def test_invalid_subject_is_400_and_not_forwarded(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    await push_blob(http, proxy, repo, EMPTY_JSON)
    body = orjson.loads(artifact_manifest(b"x"))
    body["subject"]["digest"] = "sha256:nothex"
    manifest = orjson.dumps(body)
    response = await push_manifest(http, proxy, repo, manifest, "bad")
    assert response.status == 400
    async with http.get(f"{registry.url}/v2/{repo}/manifests/bad") as upstream:
        assert upstream.status == 404, "a refused manifest must not reach the registry"


async def test_oversized_manifest_is_413_and_not_forwarded(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url, max_manifest_bytes=1024)
    manifest = artifact_manifest(b"x", annotations={"pad": "p" * 2000})
    response = await push_manifest(http, proxy, repo, manifest, "big")
    assert response.status == 413
    async with http.get(f"{registry.url}/v2/{repo}/manifests/big") as upstream:
        assert upstream.status == 404


async def test_non_json_manifest_is_judged_by_the_upstream(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    direct = await push_manifest(http, registry.url, repo, b"{not json", "t")
    proxied = await push_manifest(http, proxy, repo, b"{not json", "t")
    assert proxied.status == direct.status == 400
    assert "OCI-Subject" not in proxied.headers


async def test_failed_upstream_put_records_nothing(
    http: aiohttp.ClientSession, index_proxy: str, repo: str
) -> None:
    """FIELD-NOTES: without the empty-config blob Distribution answers 400 MANIFEST_BLOB_UNKNOWN."""
    image = await push_image(http, index_proxy, repo, "v1")
    response = await push_manifest(http, index_proxy, repo, artifact_manifest(image))
    assert response.status == 400
    assert "OCI-Subject" not in response.headers
    _, index = await referrers(http, index_proxy, repo, sha256(image))
    assert index["manifests"] == []


@pytest.mark.parametrize("kind", ["embedded", "redis"])
async def test_pagination_over_5000_referrers_is_complete_and_stable(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    redis_url = request.getfixturevalue("redis_server").url if kind == "redis" else None
    proxy = await start_proxy(
        registry.url, referrers_page_size=500, redis_url=redis_url, fallback_tags=FallbackMode.OFF
    )
    image = await push_subject_image(http, proxy, repo)
    limit = asyncio.Semaphore(16)

    async def one(n: int) -> str:
        async with limit:
            manifest = artifact_manifest(
                image, artifact_type=SBOM if n % 2 else SIGNATURE, annotations={"n": str(n)}
            )
            response = await push_manifest(http, proxy, repo, manifest)
            assert response.status == 201
            return sha256(manifest)

    pushed = await asyncio.gather(*(one(n) for n in range(5000)))
    seen: list[str] = []
    url: str | None = f"{proxy}/v2/{repo}/referrers/{sha256(image)}"
    pages = 0
    while url is not None and pages < 20:
        async with http.get(url) as response:
            assert response.status == 200
            page = orjson.loads(await response.read())["manifests"]
            assert len(page) <= 500
            seen.extend(d["digest"] for d in page)
            link = response.headers.get("Link")
        pages += 1
        if pages == 3:
            late = await one(5000)
            pushed.append(late)
        url = str(URL(proxy).join(URL(link.split(";")[0].strip("<> ")))) if link else None
    assert pages == 11
    assert len(seen) == len(set(seen)) == 5001
    assert set(seen) == set(pushed)
    assert seen[-1] == late
    sboms, filtered_url = 0, f"{proxy}/v2/{repo}/referrers/{sha256(image)}?artifactType={SBOM}"
    next_url: str | None = filtered_url
    while next_url is not None:
        async with http.get(next_url) as response:
            assert response.headers["OCI-Filters-Applied"] == "artifactType"
            sboms += len(orjson.loads(await response.read())["manifests"])
            link = response.headers.get("Link")
        next_url = str(URL(proxy).join(URL(link.split(";")[0].strip("<> ")))) if link else None
    assert sboms == 2500


async def test_redis_down_attach_is_503_and_the_retry_records_it(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    tmp_path: Any,
) -> None:
    from proxy.devstack.processes import running_redis

    port = free_port()
    proxy = await start_proxy(registry.url, redis_url=f"redis://127.0.0.1:{port}/0")
    image = await push_subject_image(http, proxy, repo)
    response, index = await referrers(http, proxy, repo, sha256(image))
    assert (response.status, index["manifests"]) == (200, []), "read from the registry's tag"
    manifest = artifact_manifest(image)
    failed = await push_manifest(http, proxy, repo, manifest)
    assert failed.status == 503, "an unrecorded referrer must not look stored"
    with running_redis(tmp_path / "redis", port=port):
        retried = await push_manifest(http, proxy, repo, manifest)
        assert retried.status == 201
        _, index = await referrers(http, proxy, repo, sha256(image))
    assert [d["digest"] for d in index["manifests"]] == [sha256(manifest)]


async def test_distribution_itself_has_no_referrers_api(
    http: aiohttp.ClientSession, registry: Registry, repo: str
) -> None:
    """FIELD-NOTES pin: the reason this proxy exists. If this fails, the upstream grew the API."""
    async with http.get(f"{registry.url}/v2/{repo}/referrers/{ZERO}") as response:
        assert response.status == 404
        assert response.content_type == "text/plain"
    image = await push_subject_image(http, registry.url, repo)
    await push_blob(http, registry.url, repo, EMPTY_JSON)
    direct = await push_manifest(http, registry.url, repo, artifact_manifest(image))
    assert direct.status == 201
    assert "OCI-Subject" not in direct.headers
