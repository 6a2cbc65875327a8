"""The two ways the proxy is deployed, each run from the image with real clients through it:
standalone (its own container, Redis beside it) and sidecar (in the registry's network
namespace, as in a pod, where nothing outside reaches the registry)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import oras.client
import oras.oci
import orjson
import pytest

import tests.integration.test_skopeo as skopeo_client
from proxy.devstack import free_port
from proxy.devstack.oci_client import INDEX, MANIFEST, legacy_tag, push_image, sha256
from tests.containers.conftest import Stack, answers, wait_for
from tests.containers.portforward import can_enter_namespaces, port_forward


async def check_clients(http: aiohttp.ClientSession, proxy: str, tmp_path: Path) -> bytes:
    """skopeo copies an image index in and out; oras-py attaches an SBOM that the Referrers API
    lists; the tag list shows the tags pushed and not the tag-schema index. Returns the
    manifest the SBOM is attached to."""
    authority = proxy.removeprefix("http://")
    source, back = tmp_path / "source", tmp_path / "back"
    skopeo_client.build_layout(source)
    env = skopeo_client.isolated_home(tmp_path / "home")
    target = f"docker://{authority}/team/app:v1"
    copy = ("copy", "--all", "--preserve-digests", "--quiet")
    no_tls = ("--src-tls-verify=false", "--dest-tls-verify=false")
    await skopeo_client.skopeo(env, *copy, *no_tls, f"oci:{source}:v1", target)
    await skopeo_client.skopeo(env, *copy, *no_tls, target, f"oci:{back}:v1")
    assert skopeo_client.blob_digests(back) == skopeo_client.blob_digests(source)

    image = await push_image(http, proxy, "team/app", "base")
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"spdxVersion": "SPDX-2.3"}')
    client = oras.client.OrasClient(hostname=authority, insecure=True)
    subject = oras.oci.Subject(mediaType=MANIFEST, digest=sha256(image), size=len(image))

    def attach() -> int:
        return int(
            client.push(
                target=f"{authority}/team/app:sbom",
                files=[f"{sbom}:application/spdx+json"],
                subject=subject,
                manifest_annotations={"org.example.kind": "sbom"},
                disable_path_validation=True,
                quiet=True,
            ).status_code
        )

    assert await asyncio.to_thread(attach) == 201
    async with http.get(f"{proxy}/v2/team/app/referrers/{sha256(image)}") as response:
        assert response.headers["Content-Type"] == INDEX
        (listed,) = orjson.loads(await response.read())["manifests"]
    assert (listed["mediaType"], listed["annotations"]) == (MANIFEST, {"org.example.kind": "sbom"})
    async with http.get(f"{proxy}/v2/team/app/tags/list") as response:
        assert orjson.loads(await response.read())["tags"] == ["base", "sbom", "v1"]
    return image


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_standalone_with_redis(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    _, registry = stack.registry()
    _, redis = stack.redis()
    proxy, url = stack.proxy(registry, redis_url=redis)
    await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    image = await check_clients(http, url, tmp_path)
    # With Redis the tag-schema index is written behind the attach (--tag-write-delay, 1 s).
    for _ in range(150):
        async with http.get(f"{registry}/v2/team/app/tags/list") as direct:
            tags = orjson.loads(await direct.read())["tags"]
        if legacy_tag(image) in tags:
            break
        await asyncio.sleep(0.1)
    assert legacy_tag(image) in tags


def tcp_open(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(address) == 0


@pytest.mark.skipif(not can_enter_namespaces(), reason="port-forwarding into a pod needs root")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_sidecar_in_the_registry_network_namespace(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    registry_port, proxy_port = free_port(), free_port()
    pod = stack.pod_registry(registry_port).get_wrapped_container()
    proxy, _ = stack.proxy(
        f"http://127.0.0.1:{registry_port}",
        network_mode=f"container:{pod.id}",
        port=proxy_port,
    )
    pod.reload()
    pid = int(pod.attrs["State"]["Pid"])
    with port_forward(pid, proxy_port) as forwarded:
        url = f"http://{forwarded}"
        await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
        await check_clients(http, url, tmp_path)
    assert not tcp_open(("127.0.0.1", registry_port)), "the registry is reachable from outside"
    with port_forward(pid, registry_port) as inside:
        assert answers(f"http://{inside}/v2/") == 200, "the registry listens in the pod"
