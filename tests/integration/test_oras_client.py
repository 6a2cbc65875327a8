"""A real client, oras-py, attaching an artifact through the proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import oras.client
import oras.oci
import orjson
import pytest
from yarl import URL

from proxy.devstack.oci_client import INDEX, MANIFEST, push_image, sha256


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_oras_push_with_subject_is_listed(
    http: aiohttp.ClientSession, proxy: str, repo: str, tmp_path: Path
) -> None:
    image = await push_image(http, proxy, repo, "v1")
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"spdxVersion": "SPDX-2.3"}')
    client = oras.client.OrasClient(hostname=URL(proxy).raw_authority, insecure=True)
    subject = oras.oci.Subject(mediaType=MANIFEST, digest=sha256(image), size=len(image))

    def push() -> tuple[int, str | None, bytes]:
        response = client.push(
            target=f"{URL(proxy).raw_authority}/{repo}:sbom",
            files=[f"{sbom}:application/spdx+json"],
            subject=subject,
            manifest_annotations={"org.example.kind": "sbom"},
            disable_path_validation=True,
            quiet=True,
        )
        return response.status_code, response.headers.get("OCI-Subject"), response.request.body

    status, oci_subject, pushed = await asyncio.to_thread(push)
    assert (status, oci_subject) == (201, sha256(image))
    async with http.get(f"{proxy}/v2/{repo}/referrers/{sha256(image)}") as response:
        assert response.headers["Content-Type"] == INDEX
        listed = orjson.loads(await response.read())["manifests"]
    manifest = orjson.loads(pushed)
    assert listed == [
        {
            "mediaType": MANIFEST,
            "digest": sha256(pushed),
            "size": len(pushed),
            "artifactType": manifest["config"]["mediaType"],
            "annotations": {"org.example.kind": "sbom"},
        }
    ]
