"""The bad-input catalogue: every case is a 4xx with an OCI error body, never a 5xx, a hang or a
crash, and the index is unchanged afterwards."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from yarl import URL

from proxy.devstack.oci_client import (
    MANIFEST,
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Registry
from tests.conftest import StartProxy

SHA = "sha256:" + "a" * 64


async def raw_request(base: str, request_line: str, extra: str = "") -> tuple[int, bytes]:
    """Bytes on the wire exactly as written: clients normalise `..` and `%2F` away."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"{request_line}\r\nHost: {url.raw_authority}\r\n{extra}Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


CASES = [
    ("GET /v2/team/app/blobs/sha256:zzz HTTP/1.1", "DIGEST_INVALID"),
    ("GET /v2/team/app/manifests/md5:d41d8cd98f00b204e9800998ecf8427e HTTP/1.1", "DIGEST_INVALID"),
    ("GET /v2/team/app/blobs/sha256:" + "A" * 64 + " HTTP/1.1", "DIGEST_INVALID"),
    ("GET /v2/team/app/referrers/sha256:1 HTTP/1.1", "DIGEST_INVALID"),
    ("GET /v2/team/../etc/tags/list HTTP/1.1", "NAME_INVALID"),
    ("GET /v2/team/%2e%2e/etc/manifests/latest HTTP/1.1", "NAME_INVALID"),
    ("GET /v2/team%2Fapp/tags/list HTTP/1.1", "NAME_INVALID"),
    ("GET /v2/team//app/manifests/latest HTTP/1.1", "NAME_INVALID"),
    ("GET /v2/Team/App/tags/list HTTP/1.1", "NAME_INVALID"),
    ("GET /v2/" + "a" * 256 + "/tags/list HTTP/1.1", "NAME_INVALID"),
    ("PUT /v2/team/app/manifests/-bad-tag HTTP/1.1", "TAG_INVALID"),
    ("GET /v2/team/app/manifests/" + "t" * 129 + " HTTP/1.1", "TAG_INVALID"),
    ("GET /v2/team/app/tags/list?n=-3 HTTP/1.1", "PAGINATION_NUMBER_INVALID"),
    ("GET /v2/team/app/referrers/" + SHA + "?next=%00%FF HTTP/1.1", "UNSUPPORTED"),
    ("GET /v2/team/app/tags/list?" + "x=1&" * 3000 + " HTTP/1.1", "UNSUPPORTED"),
]


@pytest.mark.parametrize(("request_line", "code"), CASES, ids=[str(n) for n in range(len(CASES))])
async def test_bad_requests_get_a_4xx_oci_error(proxy: str, request_line: str, code: str) -> None:
    status, body = await raw_request(proxy, request_line)
    assert 400 <= status < 500
    assert orjson.loads(body)["errors"][0]["code"] == code


async def test_distribution_itself_answers_500_to_an_unknown_algorithm(registry: Registry) -> None:
    """FIELD-NOTES pin: why the proxy judges digests before forwarding."""
    status, body = await raw_request(
        registry.url, "GET /v2/team/app/manifests/md5:d41d8cd98f00b204e9800998ecf8427e HTTP/1.1"
    )
    assert status == 500
    assert b"/docker/registry/v2" in body, "and its detail shows the storage path"


async def test_bad_manifests_leave_the_index_unchanged(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url, max_manifest_bytes=64 * 1024)
    image = await push_subject_image(http, proxy, repo)
    good = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, good)).status == 201
    bad_subject = orjson.loads(artifact_manifest(image))
    bodies = [
        good[: len(good) // 2],
        b"\x00\xff" * 100,
        orjson.dumps({**bad_subject, "subject": "sha256:" + "b" * 64}),
        orjson.dumps({**bad_subject, "subject": {**bad_subject["subject"], "size": -1}}),
        orjson.dumps({**bad_subject, "subject": {**bad_subject["subject"], "digest": "x:y:z"}}),
        artifact_manifest(image, annotations={"pad": "p" * 70_000}),
    ]
    for body in bodies:
        response = await push_manifest(http, proxy, repo, body, "bad")
        assert 400 <= response.status < 500, (response.status, body[:60])
        assert "OCI-Subject" not in response.headers
    assert await listed_referrers(http, proxy, repo, image) == [sha256(good)]
    async with http.get(f"{proxy}/v2/{repo}/manifests/bad", headers={"Accept": MANIFEST}) as r:
        assert r.status == 404, "nothing bad was stored"


async def test_many_filters_and_long_headers_are_served(
    http: aiohttp.ClientSession, proxy: str, repo: str
) -> None:
    params = [("artifactType", f"application/vnd.t{n}") for n in range(200)]
    async with http.get(f"{proxy}/v2/{repo}/referrers/{SHA}", params=params) as response:
        assert response.status == 200
        assert response.headers["OCI-Filters-Applied"] == "artifactType"
    status, _ = await raw_request(
        proxy, f"GET /v2/{repo}/referrers/{SHA} HTTP/1.1", "X-Big: " + "h" * 20_000 + "\r\n"
    )
    assert 400 <= status < 500, "an oversized header is refused, not a crash"


async def test_a_manifest_that_trickles_in_times_out_with_408(
    start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url, read_timeout=0.5)
    url = URL(proxy)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"PUT /v2/{repo}/manifests/slow HTTP/1.1\r\nHost: {url.raw_authority}\r\n"
        f"Content-Type: {MANIFEST}\r\nContent-Length: 1000\r\n\r\n{{".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 408
    assert orjson.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
