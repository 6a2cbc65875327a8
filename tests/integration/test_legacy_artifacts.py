"""`referrers-proxy legacy-artifacts`: the tags a legacy registry needed, listed and removed after
an upgrade. Against the real Distribution 2.8 (deletes by digest only) and the stand-in OCI 1.1
registry (deletes a tag alone)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys

import aiohttp
import orjson
import pytest
from yarl import URL

from proxy.config import Settings
from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    artifact_manifest,
    legacy_tag,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Registry
from proxy.oci.legacy_tags import LegacyKind
from proxy.services.legacy_cleanup import CleanupRefused, Summary, legacy_artifacts
from tests.conftest import StartProxy
from tests.harness.native_registry import AUTH, TOKEN, running_native_registry


def keep(body: bytes) -> str:
    return "_referrer." + sha256(body).replace(":", "-")


async def tags(
    http: aiohttp.ClientSession, base: str, repo: str, headers: dict[str, str] | None = None
) -> list[str]:
    async with http.get(f"{base}/v2/{repo}/tags/list", headers=headers) as answer:
        assert answer.status == 200
        return sorted(orjson.loads(await answer.read())["tags"] or [])


async def run(
    upstream: str,
    repo: str,
    *,
    delete: bool = False,
    force: bool = False,
    auth: str | None = None,
    only: LegacyKind | None = None,
) -> tuple[Summary, list[str]]:
    out = io.StringIO()
    summary = await legacy_artifacts(
        Settings(upstream=URL(upstream)),
        repositories=[repo],
        auth=auth,
        delete=delete,
        force=force,
        only=only,
        out=out,
    )
    listed = [line.split("\t")[0] for line in out.getvalue().splitlines()[:-1]]
    return summary, listed


async def test_on_distribution_tag_indexes_go_by_digest_and_keep_tags_stay(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(registry.url)
    image = await push_subject_image(http, proxy, repo)
    referrers = [artifact_manifest(image, annotations={"n": str(n)}) for n in range(2)]
    for body in referrers:
        assert (await push_manifest(http, proxy, repo, body)).status == 201
    before = await tags(http, registry.url, repo)
    legacy = sorted([legacy_tag(image), *(keep(body) for body in referrers)])
    assert before == sorted(["v1", *legacy])

    summary, listed = await run(registry.url, repo)
    assert listed == [f"{repo}:{tag}" for tag in legacy], "a dry run lists exactly those"
    assert (summary.tag_indexes, summary.keep_tags, summary.removed) == (1, 2, 0)
    assert await tags(http, registry.url, repo) == before

    with pytest.raises(CleanupRefused, match="--force"):
        await run(registry.url, repo, delete=True)
    assert await tags(http, registry.url, repo) == before

    summary, _ = await run(registry.url, repo, delete=True, force=True)
    assert (summary.removed, summary.left, summary.errors) == (1, 2, 0)
    assert await tags(http, registry.url, repo) == sorted(["v1", *map(keep, referrers)])
    for body in referrers:  # the keep tags stayed: a delete by digest would delete the referrer
        async with http.head(
            f"{registry.url}/v2/{repo}/manifests/{sha256(body)}", headers={"Accept": MANIFEST}
        ) as answer:
            assert answer.status == 200
    assert sorted(await listed_referrers(http, proxy, repo, image)) == sorted(
        sha256(body) for body in referrers
    ), "the proxy's index lists them all the same"

    summary, listed = await run(registry.url, repo, only=LegacyKind.TAG_INDEX)
    assert (summary.tag_indexes, listed) == (0, []), "a second run finds none"


async def test_a_tag_index_another_tag_names_is_left(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """Distribution deletes a manifest by digest with every tag naming it."""
    proxy = await start_proxy(registry.url, keep_tags=False)
    image = await push_subject_image(http, proxy, repo)
    assert (await push_manifest(http, proxy, repo, artifact_manifest(image))).status == 201
    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/{legacy_tag(image)}", headers={"Accept": INDEX}
    ) as answer:
        index = await answer.read()
    pinned = await push_manifest(http, registry.url, repo, index, "pinned", media_type=INDEX)
    assert pinned.status == 201

    summary, _ = await run(registry.url, repo, delete=True, force=True)
    assert (summary.tag_indexes, summary.removed, summary.left) == (1, 0, 1)
    assert await tags(http, registry.url, repo) == sorted(["pinned", legacy_tag(image), "v1"])


async def test_on_an_oci_1_1_registry_each_tag_goes_alone(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    async with running_native_registry() as (registry, url):
        proxy = await start_proxy(url)
        image = b'{"schemaVersion":2}'
        assert (await push_manifest(http, proxy, "app", image, "v1", headers=AUTH)).status == 201
        referrer = artifact_manifest(image)
        assert (await push_manifest(http, proxy, "app", referrer, headers=AUTH)).status == 201
        assert await tags(http, url, "app", AUTH) == [keep(referrer), legacy_tag(image), "v1"]
        registry.native = True

        summary, _ = await run(url, "app", delete=True, auth=TOKEN)
        assert (summary.tag_indexes, summary.keep_tags, summary.removed) == (1, 1, 2)
        assert await tags(http, url, "app", AUTH) == ["v1"]
        assert ("DELETE", f"/v2/app/manifests/{sha256(referrer)}") not in registry.writes
        async with http.get(f"{url}/v2/app/manifests/{sha256(referrer)}", headers=AUTH) as got:
            assert got.status == 200, "the referrer itself stays"


async def test_the_command_line_lists_and_refuses(
    http: aiohttp.ClientSession, registry: Registry, repo: str
) -> None:
    await push_subject_image(http, registry.url, repo)

    async def command(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "proxy", "legacy-artifacts", "--repository", repo, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REFERRERS_PROXY_UPSTREAM": registry.url},
        )

    listed = await command()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.endswith(
        "(dry run: --delete to remove): tag-schema indexes 0, keep tags"
        " 0, removed 0, left 0, errors 0\n"
    ), listed.stdout
    refused = await command("--delete")
    assert refused.returncode == 1
    assert "--force" in refused.stderr
