"""A small OCI image pushed straight to a registry, for the scenarios that only pull it."""

from __future__ import annotations

import hashlib

import aiohttp
import orjson
from yarl import URL

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{MANIFEST}, application/vnd.oci.image.index.v1+json"


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> None:
    """POST, then the whole body in the closing PUT (Distribution 2.8 ignores a POST's body)."""
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as started:
        if started.status != 202:
            raise RuntimeError(f"blob upload to {base} answered {started.status}")
        location = URL(started.headers["Location"])
    target = URL(base).join(location).update_query(digest=digest_of(data))
    async with http.put(
        target, data=data, headers={"Content-Type": "application/octet-stream"}
    ) as done:
        if done.status != 201:
            raise RuntimeError(f"blob upload to {base} answered {done.status}")


async def push_small_image(http: aiohttp.ClientSession, base: str, repo: str, tag: str) -> str:
    """A config and one layer, tagged `tag`; the manifest's digest."""
    config = orjson.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}})
    layer = b"a layer of " + repo.encode()
    for blob in (config, layer):
        await push_blob(http, base, repo, blob)
    manifest = orjson.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        }
    )
    async with http.put(
        f"{base}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST}
    ) as answer:
        if answer.status != 201:
            raise RuntimeError(f"manifest PUT to {base} answered {answer.status}")
    return digest_of(manifest)
