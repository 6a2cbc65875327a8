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
import redis.asyncio as aioredis
from yarl import URL

from proxy.config import FallbackMode
from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    legacy_attach,
    legacy_tag,
    listed_referrers,
    push_manifest,
    push_subject_image,
    read_tag_index,
    sha256,
)
from proxy.devstack.processes import REGISTRY_BIN, Redis, Registry, free_port, running_registry
from tests.conftest import StartProxy
from tests.harness.fault_relay import running_relay
from tests.integration.test_reindex import run_reindex

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
    await collect_garbage(tmp_path / "config.yml")
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


async def collect_garbage(config: Path) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [REGISTRY_BIN, "garbage-collect", "--delete-untagged", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


async def test_reindex_migrates_a_registry_to_keep_tags_and_rebuilds_without_tag_indexes(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    redis_server: Redis,
    tmp_path: Path,
    repo: str,
) -> None:
    """Referrers a legacy client attached (or a proxy before keep tags) have no keep tag: GC
    would take them. `reindex` adds the missing ones (idempotently); after GC, with every
    tag-schema index deleted and Redis wiped, `reindex` rebuilds the index from keep tags alone."""
    port = free_port()
    with running_registry(tmp_path, port=port) as registry:
        image = await push_subject_image(http, registry.url, repo)
        legacy = [await legacy_attach(http, registry.url, repo, image, n) for n in range(3)]
        signature = artifact_manifest(legacy[0], artifact_type="application/vnd.example.sig")
        assert (await push_manifest(http, registry.url, repo, signature, "sig")).status == 201
        assert not [t for t in await tags(http, registry.url, repo) if t.startswith(KEEP)]
        args = ("--upstream", registry.url, "--repository", repo)
        code, out, err = await run_reindex(*args)
        assert code == 0, err
        assert "keep tags added 4," in out
        code, out, err = await run_reindex(*args)
        assert (code, "keep tags added 0," in out) == (0, True)
        _, _, tag_index = await read_tag_index(http, registry.url, repo, image)
        async with http.delete(f"{registry.url}/v2/{repo}/manifests/{tag_index}") as deleted:
            assert deleted.status == 202, "no tag-schema index left"
        async with http.delete(f"{registry.url}/v2/{repo}/manifests/{sha256(signature)}") as gone:
            assert gone.status == 202, "its tag goes with it"
        assert legacy_tag(image) not in await tags(http, registry.url, repo)
    await collect_garbage(tmp_path / "config.yml")
    with running_registry(tmp_path, port=port) as registry:
        for manifest in legacy:
            assert await manifest_status(http, registry.url, repo, sha256(manifest)) == 200
        client = aioredis.Redis.from_url(redis_server.url)
        await client.flushdb()
        await client.aclose()
        code, out, err = await run_reindex(
            "--upstream", registry.url, "--repository", repo, "--redis-url", redis_server.url
        )
        assert code == 0, err
        assert "referrers indexed 3," in out
        fresh = await start_proxy(
            registry.url, redis_url=redis_server.url, fallback_tags=FallbackMode.OFF
        )
        assert sorted(await listed_referrers(http, fresh, repo, image)) == sorted(
            sha256(m) for m in legacy
        )
        assert await listed_referrers(http, fresh, repo, legacy[0]) == []


async def test_a_put_by_digest_is_one_write_that_also_tags(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """FIELD-NOTES style pin: Distribution 2.8 answers a manifest PUT by tag with the same
    Location (by digest) and Docker-Content-Digest as a PUT by digest, so the proxy makes a
    referrer's PUT by digest as one PUT by its keep tag, not two PUTs. A PUT by a tag of the
    client's, or by a digest the bytes do not have, goes as sent."""
    image = await push_subject_image(http, registry.url, repo)
    async with running_relay(registry.url) as (relay, url):
        proxy = await start_proxy(url)
        referrer = artifact_manifest(image)
        digest = sha256(referrer)
        async with http.put(
            f"{proxy}/v2/{repo}/manifests/{digest}",
            data=referrer,
            headers={"Content-Type": MANIFEST},
        ) as answer:
            assert answer.status == 201
            assert answer.headers["Docker-Content-Digest"] == digest
            assert answer.headers["Location"] == f"{proxy}/v2/{repo}/manifests/{digest}"
            assert answer.headers["OCI-Subject"] == sha256(image)
        keep = f"{KEEP}{digest.replace(':', '-')}"

        def puts() -> list[str]:
            """Manifest PUTs, but for the tag-schema index's."""
            schema = f"PUT /v2/{repo}/manifests/{legacy_tag(image)}"
            return [seen for seen in relay.seen if seen.startswith("PUT") and seen != schema]

        assert puts() == [f"PUT /v2/{repo}/manifests/{keep}"]
        assert keep in await tags(http, registry.url, repo)

        relay.seen.clear()
        tagged = artifact_manifest(image, annotations={"n": "tagged"})
        assert (await push_manifest(http, proxy, repo, tagged, "attestation")).status == 201
        assert puts() == [
            f"PUT /v2/{repo}/manifests/attestation",
            f"PUT /v2/{repo}/manifests/{KEEP}{sha256(tagged).replace(':', '-')}",
        ]
        relay.seen.clear()
        wrong = await push_manifest(
            http, proxy, repo, artifact_manifest(image, annotations={"n": "x"}), digest
        )
        assert wrong.status == 400, "the registry checks the digest it was given"
        assert puts() == [f"PUT /v2/{repo}/manifests/{digest}"]
        assert await listed_referrers(http, proxy, repo, image) == [digest, sha256(tagged)]
