"""`referrers-proxy prune` finds the referrers of deleted subjects, and deletes them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from proxy.devstack.oci_client import (
    artifact_manifest,
    legacy_attach,
    legacy_tag,
    listed_referrers,
    manifest_status,
    push_image,
    push_manifest,
    push_subject_image,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import Redis, Registry
from tests.conftest import StartProxy


async def run_prune(*args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "prune", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    return done.returncode, done.stdout, done.stderr


def listed(out: str, verb: str) -> set[str]:
    return {line.split()[1] for line in out.splitlines() if line.startswith(verb + " ")}


async def test_prune_lists_then_deletes_exactly_the_orphans(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    own_registry: Registry,
    redis_server: Redis,
    tmp_path: Path,
) -> None:
    proxy = await start_proxy(own_registry.url, redis_url=redis_server.url)
    repo, other = "prune/app", "prune/other"
    gone = await push_subject_image(http, proxy, repo)
    sbom = artifact_manifest(gone, annotations={"kind": "sbom"})
    signature = artifact_manifest(sbom, annotations={"kind": "signature of the sbom"})
    for manifest in (sbom, signature):
        assert (await push_manifest(http, proxy, repo, manifest)).status == 201
    # The legacy client's read-modify-write comes after the proxy's write behind the attach:
    # straddling it, one of the two overwrites the other (CI lost the legacy entry that way).
    _, in_tag, _ = await settled_tag_index(http, own_registry.url, repo, gone, [sha256(sbom)])
    assert [d["digest"] for d in in_tag] == [sha256(sbom)]
    legacy = await legacy_attach(http, own_registry.url, repo, gone, 1)
    kept_image = await push_image(http, proxy, repo, "v2", layer=b"another layer")
    kept = artifact_manifest(kept_image)
    assert (await push_manifest(http, proxy, repo, kept)).status == 201
    other_gone = await push_subject_image(http, proxy, other)
    other_orphan = artifact_manifest(other_gone)
    assert (await push_manifest(http, proxy, other, other_orphan)).status == 201
    for name, image in ((repo, gone), (other, other_gone)):
        async with http.delete(f"{own_registry.url}/v2/{name}/manifests/{sha256(image)}") as d:
            assert d.status == 202  # straight at the registry: the proxy never sees it
    orphans = {f"{repo}@{sha256(m)}" for m in (sbom, signature, legacy)}
    orphans |= {f"{repo}:{legacy_tag(m)}" for m in (gone, sbom)}  # their tag-schema indexes

    args = ("--upstream", own_registry.url, "--redis-url", redis_server.url)
    code, out, err = await run_prune(*args, "--repository", repo)
    assert code == 0, err
    assert listed(out, "orphan") == orphans
    assert "dry run" in out
    assert "orphans 3, deleted 0," in out
    assert await manifest_status(http, own_registry.url, repo, sha256(sbom)) == 200, "dry run"
    # Found by review: a dry run's checkpoint made a --delete resuming from it skip every
    # repository the dry run had listed, and exit 0 having deleted nothing.
    dry = tmp_path / "dry.done"
    code, out, err = await run_prune(*args, "--repository", repo, "--resume", str(dry))
    assert (code, "orphans 3, deleted 0," in out) == (0, True), err
    code, out, err = await run_prune(*args, "--delete", "--resume", str(dry))
    assert code == 2
    assert "was started by `prune`, not `prune --delete`" in err
    assert await manifest_status(http, own_registry.url, repo, sha256(sbom)) == 200

    checkpoint = tmp_path / "prune.done"
    code, out, err = await run_prune(*args, "--delete", "--resume", str(checkpoint))
    assert code == 0, err
    assert listed(out, "deleting") == orphans | {
        f"{other}@{sha256(other_orphan)}",
        f"{other}:{legacy_tag(other_gone)}",
    }
    lines = out.splitlines()
    assert lines.index(f"deleting {repo}@{sha256(signature)} (subject {sha256(sbom)})") < (
        lines.index(f"deleting {repo}@{sha256(sbom)} (subject {sha256(gone)})")
    ), "deepest first"
    assert "errors 0" in out
    for m in (sbom, signature, legacy):
        assert await manifest_status(http, own_registry.url, repo, sha256(m)) == 404
    for m in (gone, sbom):
        assert await manifest_status(http, own_registry.url, repo, legacy_tag(m)) == 404
    assert await manifest_status(http, own_registry.url, repo, sha256(kept)) == 200
    assert await listed_referrers(http, proxy, repo, gone) == []
    assert await listed_referrers(http, proxy, repo, kept_image) == [sha256(kept)]
    async with http.get(f"{own_registry.url}/v2/{repo}/tags/list") as tags:
        names = (await tags.json())["tags"]
    assert sorted(names) == sorted(
        ["v2", f"_referrer.{sha256(kept).replace(':', '-')}", legacy_tag(kept_image)]
    )

    code, out, _ = await run_prune(*args, "--delete", "--resume", str(checkpoint))
    assert (code, "resumed past 2" in out) == (0, True)
    code, out, err = await run_prune(*args, "--delete")
    assert code == 0, err
    assert "orphans 0, deleted 0," in out


async def test_prune_without_credentials_is_refused(auth_registry: Registry) -> None:
    """Anonymous against an htpasswd registry: the catalog is refused, nothing is deleted."""
    code, _, err = await run_prune("--upstream", auth_registry.url, "--delete")
    assert code == 1
    assert "401" in err
