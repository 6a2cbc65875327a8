"""`--cascade-delete`: deleting an image through the proxy deletes its referrer tree, against the
real registry; a relay refuses one referrer's delete (a per-manifest refusal Distribution's
repository-wide permissions cannot make)."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    artifact_manifest,
    legacy_attach,
    legacy_tag,
    listed_referrers,
    manifest_status,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry
from tests.conftest import StartProxy
from tests.harness.fault_relay import Canned, running_relay
from tests.integration.test_prune import run_prune


async def tree(http: aiohttp.ClientSession, proxy: str, registry: str, repo: str) -> list[bytes]:
    """An image, an SBOM of it, a signature of the SBOM, a certificate of the signature (three
    levels, attached through the proxy), and a legacy client's signature of the image (a
    tag-schema index only): [image, sbom, signature, certificate, legacy]."""
    image = await push_subject_image(http, proxy, repo)
    sbom = artifact_manifest(image, annotations={"kind": "sbom"})
    signature = artifact_manifest(sbom, annotations={"kind": "signature"})
    certificate = artifact_manifest(signature, annotations={"kind": "certificate"})
    for manifest in (sbom, signature, certificate):
        assert (await push_manifest(http, proxy, repo, manifest)).status == 201
    # Settled before the legacy client's read-modify-write of the image's tag (see test_prune).
    for subject, child in ((image, sbom), (sbom, signature), (signature, certificate)):
        _, listed, _ = await settled_tag_index(http, registry, repo, subject, [sha256(child)])
        assert [d["digest"] for d in listed] == [sha256(child)]
    legacy = await legacy_attach(http, registry, repo, image, 1)
    return [image, sbom, signature, certificate, legacy]


async def test_cascade_delete_leaves_nothing_behind(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    redis_server: Redis,
    repo: str,
) -> None:
    proxy = await start_proxy(registry.url, redis_url=redis_server.url, cascade_delete=True)
    manifests = await tree(http, proxy, registry.url, repo)
    image = manifests[0]
    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(image)}") as deleted:
        assert deleted.status == 202
        assert deleted.headers["Referrers-Proxy-Cascade"] == "deleted=4, failed=0"
    for manifest in manifests:
        assert await manifest_status(http, registry.url, repo, sha256(manifest)) == 404
        assert await listed_referrers(http, proxy, repo, manifest) == []
    for subject in manifests[:3]:  # its tag-schema index, if it had one
        assert await manifest_status(http, registry.url, repo, legacy_tag(subject)) == 404
    async with http.get(f"{registry.url}/v2/{repo}/tags/list") as tags:
        assert (await tags.json())["tags"] in (None, []), "tags, keep tags, tag-schema tags"
    async with http.get(f"{proxy}/metrics") as page:
        metrics = await page.text()
    assert 'referrers_proxy_cascade_deletes_total{result="deleted"} 4.0' in metrics


async def test_without_the_flag_a_delete_leaves_the_referrers(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url)
    image, sbom, *_ = await tree(http, proxy, registry.url, repo)
    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(image)}") as deleted:
        assert deleted.status == 202
        assert "Referrers-Proxy-Cascade" not in deleted.headers
    assert await manifest_status(http, registry.url, repo, sha256(sbom)) == 200


async def test_a_refused_referrer_is_reported_and_left_for_prune(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
) -> None:
    async with running_relay(registry.url) as (relay, relayed):
        proxy = await start_proxy(relayed, cascade_delete=True, fallback_tags=FallbackMode.WRITE)
        image, sbom, signature, certificate, legacy = await tree(http, proxy, registry.url, repo)
        refused = f"/v2/{repo}/manifests/{sha256(signature)}"

        def refuse(request: web.Request) -> bool:
            return request.method == "DELETE" and request.path == refused

        denied = orjson.dumps({"errors": [{"code": "DENIED", "message": "not this one"}]})
        relay.answer(refuse, Canned(403, denied, {"Content-Type": "application/json"}))
        async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(image)}") as deleted:
            assert deleted.status == 202
            assert deleted.headers["Referrers-Proxy-Cascade"] == "deleted=3, failed=1"
        assert f"DELETE {refused}" in relay.seen
    for gone in (image, sbom, certificate, legacy):
        assert await manifest_status(http, registry.url, repo, sha256(gone)) == 404
    assert await manifest_status(http, registry.url, repo, sha256(signature)) == 200

    code, out, err = await run_prune("--upstream", registry.url, "--repository", repo, "--delete")
    assert code == 0, err
    assert f"deleting {repo}@{sha256(signature)} (subject {sha256(sbom)})" in out
    assert await manifest_status(http, registry.url, repo, sha256(signature)) == 404
