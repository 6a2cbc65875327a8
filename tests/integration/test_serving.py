"""The proxy as operators run it: HTTPS, and logs that hold no secrets."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from proxy.devstack.oci_client import basic_auth, push_blob
from proxy.devstack.processes import Registry, make_tls_files, running_proxy


async def test_https_serving_and_a_log_without_secrets(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    args = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    with running_proxy(tmp_path / "proxy", registry.url, *args) as proxy:
        https = proxy.url.replace("http://", "https://")
        trust = ssl.create_default_context(cafile=str(tls.ca))
        credentials = basic_auth("someone", "hunter2-secret")
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust), headers=credentials
        ) as http:
            async with http.get(f"{https}/v2/") as answer:
                assert answer.status == 200
            await push_blob(http, https, repo, b"layer bytes")
            async with http.post(f"{https}/v2/{repo}/blobs/uploads/") as started:
                state = started.headers["Location"].split("_state=")[1].split("&")[0]
    log = "".join(path.read_text() for path in (tmp_path / "proxy").glob("proxy-*.log"))
    assert "listening on https://" in log
    assert f'"POST /v2/{repo}/blobs/uploads/" 202' in log
    assert "_state=REDACTED" in log
    assert state not in log
    assert credentials["Authorization"].split()[1] not in log
    assert "hunter2" not in log
