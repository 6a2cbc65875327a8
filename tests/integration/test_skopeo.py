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

from tests.harness.processes import Registry
from tests.oci import INDEX, MANIFEST, sha256

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
BIG_LAYER = 24 * 1024 * 1024


def _blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def _descriptor(media_type: str, layout: Path, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _blob(layout, data), "size": len(data), **extra}


def build_layout(layout: Path) -> bytes:
    """An OCI image layout holding an index of two platform images, one with a large layer.
    Returns the image index bytes."""
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
        manifests.append(
            _descriptor(MANIFEST, layout, manifest, platform={"architecture": arch, "os": "linux"})
        )
    index = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
    top = _descriptor(INDEX, layout, index, annotations={"org.opencontainers.image.ref.name": "v1"})
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


async def skopeo(tmp_path: Path, *args: str) -> bytes:
    """Run skopeo without blocking the event loop the in-process proxy serves on."""
    policy = tmp_path / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        SKOPEO,
        "--policy",
        str(policy),
        "--registries.d",
        str(tmp_path),
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
    target = f"docker://{URL(proxy).raw_authority}/{repo}:v1"
    no_tls = ("--src-tls-verify=false", "--dest-tls-verify=false")
    await skopeo(
        tmp_path, "copy", "--all", "--preserve-digests", *no_tls, f"oci:{source}:v1", target
    )

    async with http.get(
        f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": INDEX}
    ) as stored:
        assert await stored.read() == index, "the registry holds the exact index pushed"
    raw = await skopeo(tmp_path, "inspect", "--raw", "--tls-verify=false", target)
    assert raw == index

    await skopeo(tmp_path, "copy", "--all", "--preserve-digests", *no_tls, target, f"oci:{back}:v1")
    out_index = orjson.loads((back / "index.json").read_bytes())["manifests"][0]
    assert out_index["digest"] == sha256(index)
    pulled, pushed = blob_digests(back), blob_digests(source)
    assert pulled == pushed, "every manifest, config and layer came back byte for byte"
    assert all(name == digest for name, digest in pulled.items())
    assert len(pulled) == 7  # index, 2 manifests, 2 configs, 2 layers
