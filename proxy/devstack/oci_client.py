"""Test helpers that speak the registry API: push blobs and manifests, build OCI documents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from typing import Any

import aiohttp
import orjson

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
ACCEPT_MANIFESTS = ", ".join(
    [MANIFEST, INDEX, "application/vnd.docker.distribution.manifest.v2+json"]
)


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


async def push_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    digest = sha256(data)
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as started:
        assert started.status == 202, await started.text()
        location = started.headers["Location"]
    async with http.put(
        location,
        params={"digest": digest},
        data=io.BytesIO(data),
        headers={"Content-Type": "application/octet-stream"},
    ) as done:
        assert done.status == 201, await done.text()
    return digest


async def push_manifest(
    http: aiohttp.ClientSession,
    base: str,
    repo: str,
    body: bytes,
    reference: str | None = None,
    media_type: str = MANIFEST,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """PUT a manifest (by digest unless `reference` is given) and return the read response."""
    async with http.put(
        f"{base}/v2/{repo}/manifests/{reference or sha256(body)}",
        data=io.BytesIO(body),
        headers={"Content-Type": media_type, **(headers or {})},
    ) as response:
        await response.read()
        return response


async def push_image(
    http: aiohttp.ClientSession, base: str, repo: str, tag: str, layer: bytes = b"layer"
) -> bytes:
    """A minimal image (config + one layer) tagged `tag`; returns the manifest bytes."""
    config = orjson.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}})
    await push_blob(http, base, repo, config)
    await push_blob(http, base, repo, layer)
    manifest = orjson.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        }
    )
    response = await push_manifest(http, base, repo, manifest, tag)
    assert response.status == 201
    return manifest


def artifact_manifest(
    subject: bytes,
    artifact_type: str | None = "application/vnd.example.sbom.v1",
    annotations: dict[str, str] | None = None,
    subject_type: str = MANIFEST,
    blob: bytes = EMPTY_JSON,
) -> bytes:
    """An artifact manifest (the image-spec 1.1 way) whose subject is the manifest `subject`."""
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(EMPTY_CONFIG, EMPTY_JSON),
        "layers": [descriptor("application/octet-stream", blob)],
        "subject": descriptor(subject_type, subject),
    }
    if artifact_type is not None:
        body["artifactType"] = artifact_type
    if annotations:
        body["annotations"] = annotations
    return orjson.dumps(body)


async def push_subject_image(http: aiohttp.ClientSession, base: str, repo: str) -> bytes:
    """An image to attach to. FIELD-NOTES: Distribution refuses a referrer (400
    MANIFEST_BLOB_UNKNOWN) whose empty-config blob is missing from the repository."""
    await push_blob(http, base, repo, EMPTY_JSON)
    return await push_image(http, base, repo, "v1")


async def manifest_status(http: aiohttp.ClientSession, base: str, repo: str, reference: str) -> int:
    """What `base` answers a GET of the manifest: 200 while it is there, 404 once gone."""
    async with http.get(
        f"{base}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS}
    ) as answer:
        return answer.status


def legacy_tag(subject: bytes) -> str:
    """The tag oras, regctl and cosign use for a sha256 subject, written out independently of
    the proxy's own naming code."""
    return sha256(subject).replace(":", "-")


async def listed_referrers(
    http: aiohttp.ClientSession, base: str, repo: str, subject: bytes
) -> list[str]:
    async with http.get(f"{base}/v2/{repo}/referrers/{sha256(subject)}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == INDEX
        return [d["digest"] for d in orjson.loads(await response.read())["manifests"]]


async def read_tag_index(
    http: aiohttp.ClientSession,
    registry_url: str,
    repo: str,
    subject: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, list[dict[str, Any]], str | None]:
    """What the registry itself holds under the subject's tag-schema name: status, the listed
    descriptors and the index's digest."""
    async with http.get(
        f"{registry_url}/v2/{repo}/manifests/{legacy_tag(subject)}",
        headers={**(headers or {}), "Accept": INDEX},
    ) as response:
        if response.status != 200:
            return response.status, [], None
        assert response.content_type == INDEX
        body = orjson.loads(await response.read())
        return 200, body["manifests"], response.headers["Docker-Content-Digest"]


async def settled_tag_index(
    http: aiohttp.ClientSession,
    registry_url: str,
    repo: str,
    subject: bytes,
    digests: list[str],
    within: float = 15.0,
    headers: dict[str, str] | None = None,
    any_order: bool = False,
) -> tuple[int, list[dict[str, Any]], str | None]:
    """The tag-schema index once it lists exactly `digests` (in that order unless `any_order`;
    none: once the tag is gone), or as it is after `within` seconds: the proxy writes it behind
    the attach."""
    deadline = time.monotonic() + within
    wanted = sorted(digests) if any_order else digests
    while True:
        read = await read_tag_index(http, registry_url, repo, subject, headers)
        listed = [d["digest"] for d in read[1]]
        if any_order:
            listed.sort()
        if (listed == wanted and (digests or read[0] == 404)) or time.monotonic() > deadline:
            return read
        await asyncio.sleep(0.02)


async def legacy_attach(
    http: aiohttp.ClientSession, registry_url: str, repo: str, subject: bytes, n: int
) -> bytes:
    """What oras or regctl do against a registry that sends no OCI-Subject: push the referrer,
    then append it to the tag-schema index."""
    artifact_type = "application/vnd.example.sbom.v1"
    referrer = artifact_manifest(
        subject, artifact_type=artifact_type, annotations={"legacy": str(n)}
    )
    assert (await push_manifest(http, registry_url, repo, referrer)).status == 201
    _, manifests, _ = await read_tag_index(http, registry_url, repo, subject)
    manifests.append(
        descriptor(MANIFEST, referrer, artifactType=artifact_type, annotations={"legacy": str(n)})
    )
    index = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
    tagged = await push_manifest(
        http, registry_url, repo, index, legacy_tag(subject), media_type=INDEX
    )
    assert tagged.status == 201
    return referrer
