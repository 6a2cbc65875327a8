"""Every referrer survives the registry's garbage collector: a hidden keep tag on each referrer
manifest, against the real Distribution 2.8 and a real `garbage-collect --delete-untagged`."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import oras.client
import oras.oci
import orjson
import pytest
from yarl import URL

from tests.conftest import StartProxy
from tests.harness.processes import REGISTRY_BIN, Registry, free_port, running_registry
from tests.oci import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)

KEEP = "_referrer."


async def tags(http: aiohttp.ClientSession, base: str, repo: str) -> list[str]:
    async with http.get(f"{base}/v2/{repo}/tags/list") as response:
        return list(orjson.loads(await response.read())["tags"] or [])


async def manifest_status(http: aiohttp.ClientSession, base: str, repo: str, digest: str) -> int:
    accept = {"Accept": f"{MANIFEST}, {INDEX}"}
    async with http.get(f"{base}/v2/{repo}/manifests/{digest}", headers=accept) as response:
        return response.status


async def test_each_referrer_gets_a_hidden_keep_tag_that_goes_with_it(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url)
    image = await push_subject_image(http, proxy, repo)
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    keep = f"{KEEP}{sha256(referrer).replace(':', '-')}"
    assert keep in await tags(http, registry.url, repo)
    assert await tags(http, proxy, repo) == ["v1"], "hidden through the proxy"
    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(referrer)}") as deleted:
        assert deleted.status == 202
    assert keep not in await tags(http, registry.url, repo), "gone with the referrer"

    plain = await start_proxy(registry.url, keep_tags=False)
    other = artifact_manifest(image, annotations={"n": "2"})
    assert (await push_manifest(http, plain, repo, other)).status == 201
    assert not [t for t in await tags(http, registry.url, repo) if t.startswith(KEEP)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_every_referrer_survives_garbage_collection(
    http: aiohttp.ClientSession, start_proxy: StartProxy, tmp_path: Path, repo: str
) -> None:
    """Attach (an SBOM, a signature of that SBOM, an artifact pushed by oras-py), stop the
    registry, run `garbage-collect --delete-untagged`, start it again: every referrer manifest
    is still there, and a proxy with an empty index lists every one of them."""
    port = free_port()
    with running_registry(tmp_path, port=port) as registry:
        proxy = await start_proxy(registry.url)
        image = await push_subject_image(http, proxy, repo)
        sbom = artifact_manifest(image, annotations={"kind": "sbom"})
        signature = artifact_manifest(
            sbom, artifact_type="application/vnd.example.signature", annotations={"of": "sbom"}
        )
        for referrer in (sbom, signature):
            assert (await push_manifest(http, proxy, repo, referrer)).status == 201
        pushed_by_oras = await oras_attach(proxy, repo, image, tmp_path)
        untagged = artifact_manifest(b'{"no":"subject"}', annotations={"control": "untagged"})
        untagged = untagged.replace(b',"subject"', b',"unrelated"')
        assert (await push_manifest(http, registry.url, repo, untagged)).status == 201
    config = tmp_path / "config.yml"
    done = await asyncio.to_thread(
        subprocess.run,
        [REGISTRY_BIN, "garbage-collect", "--delete-untagged", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with running_registry(tmp_path, port=port) as registry:
        assert await manifest_status(http, registry.url, repo, sha256(untagged)) == 404, (
            "control: GC did delete an untagged manifest"
        )
        for digest in (sha256(sbom), sha256(signature), pushed_by_oras):
            assert await manifest_status(http, registry.url, repo, digest) == 200, digest
        fresh = await start_proxy(registry.url)
        on_image = await listed_referrers(http, fresh, repo, image)
        assert sorted(on_image) == sorted([sha256(sbom), pushed_by_oras])
        assert await listed_referrers(http, fresh, repo, sbom) == [sha256(signature)]


async def oras_attach(proxy: str, repo: str, image: bytes, workdir: Path) -> str:
    """oras-py pushes an artifact with a subject through the proxy; its digest."""
    payload = workdir / "attestation.json"
    payload.write_text('{"predicate": {}}')
    host = URL(proxy).raw_authority
    client = oras.client.OrasClient(hostname=host, insecure=True)
    subject = oras.oci.Subject(mediaType=MANIFEST, digest=sha256(image), size=len(image))

    def push() -> bytes:
        response = client.push(
            target=f"{host}/{repo}:attestation",
            files=[f"{payload}:application/vnd.in-toto+json"],
            subject=subject,
            disable_path_validation=True,
            quiet=True,
        )
        assert response.status_code == 201
        return bytes(response.request.body)

    return sha256(await asyncio.to_thread(push))
