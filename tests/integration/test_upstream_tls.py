"""An https:// upstream: verified by default, with a CA file, or (loudly) not at all."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy.devstack.processes import Registry, TLSFiles, make_tls_files, running_registry
from tests.conftest import StartProxy


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("tls-registry"), tls=tls_files) as started:
        yield started


async def test_ca_file_verifies_the_upstream(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    tls_registry: Registry,
    tls_files: TLSFiles,
) -> None:
    proxy = await start_proxy(tls_registry.url, upstream_ca_file=str(tls_files.ca))
    async with http.get(f"{proxy}/v2/") as response:
        assert response.status == 200
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_unknown_certificate_is_refused_with_502(
    http: aiohttp.ClientSession, start_proxy: StartProxy, tls_registry: Registry
) -> None:
    proxy = await start_proxy(tls_registry.url)
    async with http.get(f"{proxy}/v2/") as response:
        assert response.status == 502
        assert orjson.loads(await response.read())["errors"][0]["code"] == "UNAVAILABLE"


async def test_insecure_skips_verification_and_says_so(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    tls_registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(tls_registry.url, upstream_insecure=True)
    async with http.get(f"{proxy}/v2/") as response:
        assert response.status == 200
    assert any("DISABLED" in record.getMessage() for record in caplog.records)
