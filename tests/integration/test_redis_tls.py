"""Redis over TLS with an ACL user: the proxy (its own process, as operators run it) verifies the
server against a test CA, logs in as a user limited to the index's keys with a password from a
file, and never shows that password, in its log, /readyz or /metrics, also when it is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.devstack.oci_client import (
    EMPTY_JSON,
    artifact_manifest,
    push_blob,
    push_manifest,
    sha256,
)
from proxy.devstack.processes import (
    Registry,
    TLSFiles,
    free_port,
    make_tls_files,
    running_proxy,
    start_redis,
    stop,
)

PASSWORD = "s3cret-Pa55word-for-the-index"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, TLSFiles]]:
    """Plain port (for the harness only) and TLS port; the user `proxy` may touch `orp:*` keys
    only and run no dangerous command."""
    workdir = tmp_path_factory.mktemp("tls-redis")
    tls = make_tls_files(workdir / "tls")
    plain, secure = free_port(), free_port()
    process = start_redis(
        workdir,
        plain,
        "--tls-port",
        str(secure),
        "--tls-cert-file",
        str(tls.cert),
        "--tls-key-file",
        str(tls.key),
        "--tls-ca-cert-file",
        str(tls.ca),
        "--tls-auth-clients",
        "no",
        "--user",
        "proxy",
        "on",
        f">{PASSWORD}",
        "~orp:*",
        "+@all",
        "-@dangerous",
    )
    try:
        yield plain, secure, tls
    finally:
        stop(process)


def _shown(workdir: Path) -> str:
    return "".join(log.read_text() for log in workdir.glob("proxy-*.log"))


async def _public(http: aiohttp.ClientSession, proxy: str) -> tuple[int, str, str]:
    async with http.get(f"{proxy}/readyz") as ready:
        status, body = ready.status, await ready.text()
    async with http.get(f"{proxy}/metrics") as metrics:
        return status, body, await metrics.text()


async def test_tls_and_acl_user_with_a_password_file(
    http: aiohttp.ClientSession,
    registry: Registry,
    tls_redis: tuple[int, int, TLSFiles],
    tmp_path: Path,
    repo: str,
) -> None:
    plain, secure, tls = tls_redis
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    with running_proxy(
        tmp_path,
        registry.url,
        "--redis-url",
        f"rediss://proxy@127.0.0.1:{secure}/0",
        "--redis-ca-file",
        str(tls.ca),
        "--redis-password-file",
        str(password_file),
        "--fallback-tags",
        "off",
    ) as proxy:
        await push_blob(http, registry.url, repo, EMPTY_JSON)
        body = artifact_manifest(b"a subject")
        assert (await push_manifest(http, proxy.url, repo, body)).status == 201
        async with http.get(f"{proxy.url}/v2/{repo}/referrers/{sha256(b'a subject')}") as answer:
            assert answer.status == 200
            listed = orjson.loads(await answer.read())["manifests"]
        assert [d["digest"] for d in listed] == [sha256(body)]
        status, ready, metrics = await _public(http, proxy.url)
    assert status == 200, ready
    admin = aioredis.Redis(port=plain)
    stored = [key async for key in admin.scan_iter(f"orp:v1:{{{repo}|*")]
    await admin.aclose()
    assert stored  # written over TLS, as the ACL user (whose keys must start with orp:)
    for shown in (ready, metrics, _shown(tmp_path)):
        assert PASSWORD not in shown


@pytest.mark.parametrize(
    ("how", "args"),
    [
        ("wrong password in the URL", ["--redis-url", "rediss://proxy:{wrong}@127.0.0.1:{port}/0"]),
        (
            "server not verified by the system CAs",
            ["--redis-url", "rediss://proxy@127.0.0.1:{port}/0"],
        ),
    ],
)
async def test_refused_index_is_unready_and_tells_no_secret(
    http: aiohttp.ClientSession,
    registry: Registry,
    tls_redis: tuple[int, int, TLSFiles],
    tmp_path: Path,
    how: str,
    args: list[str],
) -> None:
    _, secure, tls = tls_redis
    wrong = "Wr0ng-" + PASSWORD
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD)
    extra = [a.format(wrong=wrong, port=secure) for a in args]
    if "{wrong}" in args[1]:
        extra += ["--redis-ca-file", str(tls.ca)]
    else:
        extra += ["--redis-password-file", str(password_file)]
    with running_proxy(tmp_path, registry.url, *extra, "--fallback-tags", "off") as proxy:
        status, ready, metrics = await _public(http, proxy.url)
    assert status == 503, how
    assert orjson.loads(ready)["checks"]["index"] == "unavailable (IndexUnavailable)", ready
    for shown in (ready, metrics, _shown(tmp_path)):
        assert wrong not in shown
        assert PASSWORD not in shown
