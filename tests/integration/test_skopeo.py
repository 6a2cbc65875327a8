"""A real client, skopeo, copies a multi-platform OCI image through the proxy and back out."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from proxy.devstack.oci_client import INDEX, MANIFEST, sha256
from proxy.devstack.processes import Registry

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
BIG_LAYER = 24 * 1024 * 1024
REF_NAME = "org.opencontainers.image.ref.name"


def _descriptor(media_type: str, layout: Path, data: bytes, **extra: Any) -> dict[str, Any]:
    """Store `data` as a blob of the layout and describe it."""
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def build_layout(layout: Path) -> bytes:
    """An OCI image layout tagged v1: an image index of a linux/amd64 image with a 24 MiB layer
    (large enough to take several reads on every hop) and a small linux/arm64 one. Returns the
    index bytes."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for arch, layer in (("amd64", os.urandom(BIG_LAYER)), ("arm64", os.urandom(300_000))):
        config = orjson.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        )
        manifest = orjson.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": _descriptor("application/vnd.oci.image.config.v1+json", layout, config),
                "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layout, layer)],
            }
        )
        platform = {"architecture": arch, "os": "linux"}
        manifests.append(_descriptor(MANIFEST, layout, manifest, platform=platform))
    index = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
    top = _descriptor(INDEX, layout, index, annotations={REF_NAME: "v1"})
    (layout / "index.json").write_bytes(
        orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [top]})
    )
    return index


def blob_digests(layout: Path) -> dict[str, str]:
    """Every blob file's name and the digest of its content, hashed anew."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (layout / "blobs" / "sha256").iterdir()
    }


def isolated_home(home: Path) -> dict[str, str]:
    """An environment in which skopeo reads no host configuration: registries.conf (a per-user
    file hides /etc/containers/registries.conf and its .d), policy, credentials and signature
    storage all live under `home`."""
    config = home / ".config" / "containers"
    config.mkdir(parents=True)
    (config / "registries.conf").write_text("")
    (config / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    (config / "registries.d").mkdir()
    (config / "registries.d" / "default.yaml").write_text(
        f"default-docker:\n  lookaside: file://{home / 'sigstore'}\n"
    )
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home),
        "TMPDIR": str(home),
    }


async def skopeo(env: dict[str, str], *args: str) -> bytes:
    """Run skopeo without blocking the event loop the in-process proxy serves on."""
    config = Path(env["HOME"]) / ".config" / "containers"
    process = await asyncio.create_subprocess_exec(
        SKOPEO,
        "--policy",
        str(config / "policy.json"),
        "--registries.d",
        str(config / "registries.d"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=150)
    assert process.returncode == 0, err.decode()
    return out


async def test_skopeo_copy_all_round_trips_through_the_proxy(
    http: aiohttp.ClientSession, proxy: str, registry: Registry, repo: str, tmp_path: Path
) -> None:
    source, back = tmp_path / "source", tmp_path / "back"
    index = build_layout(source)
    pushed = blob_digests(source)
    assert len(pushed) == 7  # index, 2 manifests, 2 configs, 2 layers
    env = isolated_home(tmp_path / "home")
    target = f"docker://{URL(proxy).raw_authority}/{repo}:v1"
    copy_all = ("copy", "--all", "--preserve-digests", "--quiet")
    no_tls = ("--src-tls-verify=false", "--dest-tls-verify=false")

    await skopeo(env, *copy_all, *no_tls, f"oci:{source}:v1", target)

    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": INDEX}
    ) as stored:
        assert stored.status == 200
        assert stored.content_type == INDEX
        assert await stored.read() == index, "the registry holds the very index bytes built"
    assert await skopeo(env, "inspect", "--raw", "--tls-verify=false", target) == index

    await skopeo(env, *copy_all, *no_tls, target, f"oci:{back}:v1")
    (top,) = orjson.loads((back / "index.json").read_bytes())["manifests"]
    assert (top["mediaType"], top["digest"]) == (INDEX, sha256(index))
    assert top["annotations"][REF_NAME] == "v1"
    pulled = blob_digests(back)
    assert pulled == pushed, "the index, both manifests, configs and layers came back intact"
    assert all(name == digest for name, digest in pulled.items()), "content matches its name"
