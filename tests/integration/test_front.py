"""deploy/nginx/front.conf.template in Debian's nginx, in front of the real registry and a proxy:
the routing table, and the integration scenarios through the front (skopeo, oras-py, the auth
challenge, bad input, streamed blobs)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import oras.client
import oras.oci
import orjson
import pytest
from yarl import URL

from proxy.devstack.front import Front, running_front
from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    basic_auth,
    push_blob,
    push_image,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Registry, free_port
from tests.conftest import AUTH_PASSWORD, AUTH_USER, StartProxy
from tests.harness.fault_relay import running_relay
from tests.integration.test_skopeo import blob_digests, build_layout, isolated_home, skopeo

ZERO = "sha256:" + "0" * 64


def authority(url: str) -> str:
    return URL(url).raw_authority


@pytest.fixture
def front_dir(tmp_path: Path) -> Path:
    return tmp_path / "front"


@pytest.fixture
async def front(
    registry: Registry, start_proxy: StartProxy, front_dir: Path
) -> AsyncIterator[Front]:
    proxy = await start_proxy(registry.url)
    with running_front(front_dir, authority(registry.url), authority(proxy)) as started:
        yield started


# (method, target, the backend that must get it)
ROUTES = [
    ("GET", "/v2/", "registry"),
    ("GET", "/v2/_catalog", "registry"),
    ("GET", "/v2/a/b/manifests/v1", "registry"),
    ("HEAD", f"/v2/a/b/manifests/{ZERO}", "registry"),
    ("GET", f"/v2/a/b/manifests/{ZERO}", "registry"),
    ("PUT", "/v2/a/b/manifests/v1", "proxy"),
    ("PUT", f"/v2/a/b/manifests/{ZERO}", "proxy"),
    ("DELETE", f"/v2/a/b/manifests/{ZERO}", "proxy"),
    ("GET", f"/v2/a/b/referrers/{ZERO}", "proxy"),
    ("HEAD", f"/v2/a/b/referrers/{ZERO}", "proxy"),
    ("GET", f"/v2/a/b/referrers/{ZERO}?artifactType=x%2By", "proxy"),
    ("POST", f"/v2/a/b/referrers/{ZERO}", "registry"),
    ("GET", "/v2/a/b/tags/list", "proxy"),
    ("GET", "/v2/a/b/tags/list?n=2&last=a", "proxy"),
    ("HEAD", "/v2/a/b/tags/list", "proxy"),
    ("GET", f"/v2/a/b/blobs/{ZERO}", "registry"),
    ("HEAD", f"/v2/a/b/blobs/{ZERO}", "registry"),
    ("DELETE", f"/v2/a/b/blobs/{ZERO}", "registry"),
    ("POST", "/v2/a/b/blobs/uploads/", "registry"),
    ("PATCH", "/v2/a/b/blobs/uploads/u-1?_state=s", "registry"),
    ("PUT", f"/v2/a/b/blobs/uploads/u-1?_state=s&digest={ZERO}", "registry"),
    ("GET", "/healthz", "proxy"),
    ("GET", "/readyz", "proxy"),
    ("GET", "/metrics", "proxy"),
    ("POST", "/metrics", "registry"),
    # Repositories named like endpoints: the last endpoint-shaped tail decides, as for the proxy.
    ("GET", "/v2/x/manifests/y/blobs/uploads/", "registry"),
    ("PUT", "/v2/x/referrers/y/manifests/v1", "proxy"),
]


async def test_the_routing_table(
    http: aiohttp.ClientSession, registry: Registry, front_dir: Path
) -> None:
    """Each target reaches exactly one backend, the one the table names, with its query."""
    async with (
        running_relay(registry.url) as (to_registry, registry_url),
        running_relay(registry.url) as (to_proxy, proxy_url),
    ):
        with running_front(front_dir, authority(registry_url), authority(proxy_url)) as front:
            for sent, (method, target, backend) in enumerate(ROUTES, 1):
                async with http.request(method, front.url + target, data=b"") as response:
                    await response.read()
                expected = to_proxy if backend == "proxy" else to_registry
                assert expected.seen[-1:] == [f"{method} {target}"], (method, target)
                assert len(to_proxy.seen) + len(to_registry.seen) == sent, (method, target)


async def test_encoded_and_dotted_targets_are_routed_and_sent_in_the_form_nginx_decoded(
    http: aiohttp.ClientSession, registry: Registry, front_dir: Path
) -> None:
    """nginx routes on the decoded, normalised path and sends that same path on, so the string
    a backend validates is the string the front routed (the proxy's own rule, kept)."""
    async with (
        running_relay(registry.url) as (to_registry, registry_url),
        running_relay(registry.url) as (to_proxy, proxy_url),
    ):
        with running_front(front_dir, authority(registry_url), authority(proxy_url)) as front:
            for target in (f"/v2/a/referr%65rs/{ZERO}", f"/v2/a/x/../referrers/{ZERO}"):
                async with http.get(front.url + target) as response:
                    await response.read()
            async with http.put(front.url + "/v2/a/manif%65sts/v1", data=b"{}") as response:
                await response.read()
    assert to_proxy.seen == [
        f"GET /v2/a/referrers/{ZERO}",
        f"GET /v2/a/referrers/{ZERO}",
        "PUT /v2/a/manifests/v1",
    ]
    assert to_registry.seen == []


async def test_skopeo_round_trip_through_the_front(
    http: aiohttp.ClientSession, front: Front, registry: Registry, repo: str, tmp_path: Path
) -> None:
    source, back = tmp_path / "source", tmp_path / "back"
    index = build_layout(source)
    pushed = blob_digests(source)
    env = isolated_home(tmp_path / "home")
    target = f"docker://{authority(front.url)}/{repo}:v1"
    copy_all = ("copy", "--all", "--preserve-digests", "--quiet")
    no_tls = ("--src-tls-verify=false", "--dest-tls-verify=false")
    await skopeo(env, *copy_all, *no_tls, f"oci:{source}:v1", target)
    async with http.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": INDEX}) as r:
        assert await r.read() == index
    await skopeo(env, *copy_all, *no_tls, target, f"oci:{back}:v1")
    assert blob_digests(back) == pushed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_oras_attach_and_referrers_through_the_front(
    http: aiohttp.ClientSession, front: Front, repo: str, tmp_path: Path
) -> None:
    image = await push_image(http, front.url, repo, "v1")
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"spdxVersion": "SPDX-2.3"}')
    client = oras.client.OrasClient(hostname=authority(front.url), insecure=True)
    subject = oras.oci.Subject(mediaType=MANIFEST, digest=sha256(image), size=len(image))

    def push() -> tuple[int, str | None, bytes]:
        response = client.push(
            target=f"{authority(front.url)}/{repo}:sbom",
            files=[f"{sbom}:application/spdx+json"],
            subject=subject,
            disable_path_validation=True,
            quiet=True,
        )
        return response.status_code, response.headers.get("OCI-Subject"), response.request.body

    status, oci_subject, pushed = await asyncio.to_thread(push)
    assert (status, oci_subject) == (201, sha256(image))  # the proxy saw the PUT
    async with http.get(f"{front.url}/v2/{repo}/referrers/{sha256(image)}") as response:
        assert response.headers["Content-Type"] == INDEX
        listed = orjson.loads(await response.read())["manifests"]
    assert [d["digest"] for d in listed] == [sha256(pushed)]
    async with http.get(f"{front.url}/v2/{repo}/tags/list") as response:
        tags = orjson.loads(await response.read())["tags"]
    assert sorted(tags) == ["sbom", "v1"]  # keep and tag-schema tags hidden by the proxy


async def test_the_auth_challenge_reaches_the_client_from_either_backend(
    http: aiohttp.ClientSession,
    auth_registry: Registry,
    start_proxy: StartProxy,
    front_dir: Path,
    repo: str,
) -> None:
    proxy = await start_proxy(auth_registry.url)
    alice = basic_auth(AUTH_USER, AUTH_PASSWORD)
    with running_front(front_dir, authority(auth_registry.url), authority(proxy)) as front:
        async with aiohttp.ClientSession(headers=alice) as as_alice:
            subject = await push_subject_image(as_alice, front.url, repo)
            sbom = artifact_manifest(subject)
            answer = await push_manifest(as_alice, front.url, repo, sbom)
            assert answer.headers["OCI-Subject"] == sha256(subject)
        for target in ("/v2/", f"/v2/{repo}/referrers/{sha256(subject)}", f"/v2/{repo}/tags/list"):
            async with http.get(front.url + target) as refused:
                assert refused.status == 401, target
                assert refused.headers["WWW-Authenticate"].startswith("Basic"), target
        async with http.get(
            f"{front.url}/v2/{repo}/referrers/{sha256(subject)}", headers=alice
        ) as listed:
            manifests = orjson.loads(await listed.read())["manifests"]
        assert [d["digest"] for d in manifests] == [sha256(sbom)]


async def test_bad_input_through_the_front(
    http: aiohttp.ClientSession, front: Front, registry: Registry, repo: str
) -> None:
    """The proxy's routes keep its 400s; the registry's routes now get the registry's own
    answers (what changes with a front), exactly as a client talking to it directly would."""
    for target in (f"/v2/{repo}/referrers/sha256:zz", f"/v2/{repo}/referrers/md5:{'0' * 32}"):
        async with http.get(front.url + target) as refused:
            assert refused.status == 400, target
            assert orjson.loads(await refused.read())["errors"][0]["code"] == "DIGEST_INVALID"
    async with http.put(
        f"{front.url}/v2/{repo}/manifests/v1",
        data=b'{"schemaVersion":2,"subject":"nope"',
        headers={"Content-Type": MANIFEST},
    ) as refused:
        assert refused.status == 400
    for target in (
        f"/v2/{repo}/manifests/sha256:zz",
        f"/v2/{repo}/blobs/sha256:zz",
        f"/v2/{repo}/blobs/md5:{'0' * 32}",
        "/v2/Upper/Case/manifests/v1",
    ):
        async with http.get(registry.url + target) as direct:
            expected = (direct.status, await direct.read())
        async with http.get(front.url + target) as through:
            assert (through.status, await through.read()) == expected, target


async def test_blobs_stream_through_the_front_and_uploads_point_back_at_it(
    http: aiohttp.ClientSession, front: Front, repo: str
) -> None:
    layer = os.urandom(8 * 1024 * 1024 + 17)
    async with http.post(f"{front.url}/v2/{repo}/blobs/uploads/") as started:
        assert started.status == 202
        assert started.headers["Location"].startswith(front.url + "/v2/")
    digest = await push_blob(http, front.url, repo, layer)
    async with http.get(f"{front.url}/v2/{repo}/blobs/{digest}") as pulled:
        assert pulled.headers["Content-Length"] == str(len(layer))
        assert await pulled.read() == layer


async def test_a_backend_that_is_down_gives_an_oci_error(
    http: aiohttp.ClientSession, registry: Registry, front_dir: Path
) -> None:
    with running_front(front_dir, authority(registry.url), f"127.0.0.1:{free_port()}") as front:
        async with http.get(f"{front.url}/v2/a/referrers/{ZERO}") as down:
            assert down.status == 502
            assert orjson.loads(await down.read())["errors"][0]["code"] == "UNAVAILABLE"
        async with http.get(f"{front.url}/v2/") as registry_side:
            assert registry_side.status == 200
