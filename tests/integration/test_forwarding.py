"""Every /v2 call answered through the proxy as the registry answers it directly."""

from __future__ import annotations

import os

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.devstack.oci_client import (
    ACCEPT_MANIFESTS,
    MANIFEST,
    basic_auth,
    push_blob,
    push_image,
    sha256,
)
from proxy.devstack.processes import Registry
from tests.conftest import AUTH_PASSWORD, AUTH_USER

SAME_HEADERS = ("Content-Length", "Content-Type", "Docker-Content-Digest", "Etag")


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: object
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, CIMultiDict(response.headers), await response.read()


async def test_version_check(http: aiohttp.ClientSession, proxy: str, registry: Registry) -> None:
    direct = await fetch(http, "GET", f"{registry.url}/v2/")
    proxied = await fetch(http, "GET", f"{proxy}/v2/")
    assert proxied[0] == direct[0] == 200
    assert proxied[1]["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert proxied[2] == direct[2]


async def test_blob_get_head_and_range_match_direct(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    data = os.urandom(300_000)
    digest = await push_blob(http, proxy, repo, data)
    path = f"/v2/{repo}/blobs/{digest}"
    for method in ("GET", "HEAD"):
        direct = await fetch(http, method, registry.url + path)
        proxied = await fetch(http, method, proxy + path)
        assert proxied[0] == direct[0] == 200
        assert {h: proxied[1].get(h) for h in SAME_HEADERS} == {
            h: direct[1].get(h) for h in SAME_HEADERS
        }
        assert proxied[2] == direct[2] == (data if method == "GET" else b"")
    ranged = {"Range": "bytes=10-99999"}
    direct = await fetch(http, "GET", registry.url + path, headers=ranged)
    proxied = await fetch(http, "GET", proxy + path, headers=ranged)
    assert proxied[0] == direct[0] == 206
    assert proxied[1]["Content-Range"] == direct[1]["Content-Range"]
    assert proxied[2] == direct[2] == data[10:100000]


async def test_chunked_upload_keeps_session_on_the_proxy(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    first, second = os.urandom(70_000), os.urandom(50_000)
    status, headers, _ = await fetch(http, "POST", f"{proxy}/v2/{repo}/blobs/uploads/")
    assert status == 202
    assert headers["Docker-Upload-Uuid"]
    location = URL(headers["Location"])
    assert location.origin() == URL(proxy).origin()
    status, headers, _ = await fetch(
        http,
        "PATCH",
        str(location),
        data=first,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"0-{len(first) - 1}",
        },
    )
    assert (status, headers["Range"]) == (202, f"0-{len(first) - 1}")
    location = URL(headers["Location"])
    assert location.origin() == URL(proxy).origin()
    status, headers, _ = await fetch(http, "GET", str(location))
    assert (status, headers["Range"]) == (204, f"0-{len(first) - 1}")
    status, headers, _ = await fetch(
        http,
        "PATCH",
        str(location),
        data=second,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}",
        },
    )
    assert status == 202
    digest = sha256(first + second)
    status, headers, _ = await fetch(
        http, "PUT", str(URL(headers["Location"]).update_query(digest=digest))
    )
    assert (status, headers["Docker-Content-Digest"]) == (201, digest)
    assert (await fetch(http, "GET", f"{registry.url}/v2/{repo}/blobs/{digest}"))[2] == (
        first + second
    )


async def test_upload_cancel(http: aiohttp.ClientSession, proxy: str, repo: str) -> None:
    _, headers, _ = await fetch(http, "POST", f"{proxy}/v2/{repo}/blobs/uploads/")
    location = headers["Location"]
    assert (await fetch(http, "DELETE", location))[0] == 204
    status, headers, body = await fetch(http, "GET", location)
    assert status == 404
    assert b"BLOB_UPLOAD_UNKNOWN" in body


async def test_cross_repository_mount(http: aiohttp.ClientSession, proxy: str, repo: str) -> None:
    digest = await push_blob(http, proxy, repo, b"shared layer")
    status, headers, _ = await fetch(
        http,
        "POST",
        f"{proxy}/v2/{repo}-other/blobs/uploads/",
        params={"mount": digest, "from": repo},
    )
    assert status == 201
    assert headers["Docker-Content-Digest"] == digest
    assert URL(headers["Location"]).origin() == URL(proxy).origin()
    assert (await fetch(http, "GET", f"{proxy}/v2/{repo}-other/blobs/{digest}"))[2] == (
        b"shared layer"
    )


async def test_manifest_round_trip_tags_catalog_and_delete(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    manifest = await push_image(http, proxy, repo, "v1")
    await push_image(http, proxy, repo, "v2", layer=b"other layer")
    accept = {"Accept": ACCEPT_MANIFESTS}
    for reference in ("v1", sha256(manifest)):
        path = f"/v2/{repo}/manifests/{reference}"
        for method in ("GET", "HEAD"):
            direct = await fetch(http, method, registry.url + path, headers=accept)
            proxied = await fetch(http, method, proxy + path, headers=accept)
            assert proxied[0] == direct[0] == 200
            assert proxied[1]["Content-Type"] == MANIFEST
            assert proxied[1]["Docker-Content-Digest"] == sha256(manifest)
            assert proxied[2] == direct[2]
    tags_direct = await fetch(http, "GET", f"{registry.url}/v2/{repo}/tags/list")
    tags_proxied = await fetch(http, "GET", f"{proxy}/v2/{repo}/tags/list")
    assert tags_proxied[0] == 200
    assert orjson.loads(tags_proxied[2]) == {
        "name": repo,
        "tags": sorted(orjson.loads(tags_direct[2])["tags"]),
    }
    catalog = await fetch(http, "GET", f"{proxy}/v2/_catalog", params={"n": "1"})
    assert catalog[0] == 200
    assert 'rel="next"' in catalog[1]["Link"]
    status, _, _ = await fetch(http, "DELETE", f"{proxy}/v2/{repo}/manifests/{sha256(manifest)}")
    assert status == 202
    assert (await fetch(http, "GET", f"{registry.url}/v2/{repo}/manifests/v1"))[0] == 404


async def test_errors_from_upstream_pass_through(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str
) -> None:
    path = f"/v2/{repo}/manifests/missing"
    direct = await fetch(http, "GET", registry.url + path)
    proxied = await fetch(http, "GET", proxy + path)
    assert proxied[0] == direct[0] == 404
    assert proxied[2] == direct[2]
    assert b"MANIFEST_UNKNOWN" in proxied[2]


async def test_paths_outside_v2_get_an_oci_error(http: aiohttp.ClientSession, proxy: str) -> None:
    status, headers, body = await fetch(http, "GET", f"{proxy}/elsewhere")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert b'"code":"UNSUPPORTED"' in body


@pytest.mark.parametrize("credentials", [None, ("alice", "wrong")])
async def test_auth_challenge_passes_through_untouched(
    http: aiohttp.ClientSession,
    start_proxy: object,
    auth_registry: Registry,
    credentials: tuple[str, str] | None,
) -> None:
    proxy = await start_proxy(auth_registry.url)  # type: ignore[operator]
    headers = basic_auth(*credentials) if credentials else {}
    direct = await fetch(http, "GET", f"{auth_registry.url}/v2/", headers=headers)
    proxied = await fetch(http, "GET", f"{proxy}/v2/", headers=headers)
    assert proxied[0] == direct[0] == 401
    assert proxied[1]["Www-Authenticate"] == direct[1]["Www-Authenticate"]
    assert proxied[2] == direct[2]


async def test_basic_auth_push_and_pull(
    start_proxy: object, auth_registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(auth_registry.url)  # type: ignore[operator]
    async with aiohttp.ClientSession(headers=basic_auth(AUTH_USER, AUTH_PASSWORD)) as http:
        manifest = await push_image(http, proxy, repo, "latest")
        status, _, body = await fetch(
            http, "GET", f"{proxy}/v2/{repo}/manifests/latest", headers={"Accept": MANIFEST}
        )
    assert (status, body) == (200, manifest)
