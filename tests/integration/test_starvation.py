"""Issue 12 item 4: clients that trickle upload bodies cannot starve everyone else.

Each test runs a scaled-down attack against the real registry: a few blob-upload PATCHes that
declare a large body and send one byte at a time, more of them than the proxy's transfer pool
holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.devstack.oci_client import ACCEPT_MANIFESTS, push_blob, push_subject_image, sha256
from proxy.devstack.processes import Registry
from tests.conftest import StartProxy

DECLARED = 1_000_000  # the body each slow upload announces and never finishes


class SlowUpload:
    """A blob-upload PATCH on its own connection whose body arrives one byte per `interval`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.interval = interval
        self.sent = 0
        self.first_byte = asyncio.Event()
        self.trickle = asyncio.create_task(self._trickle())

    @classmethod
    async def open(cls, proxy: str, location: str, interval: float) -> SlowUpload:
        origin, target = URL(proxy), URL(location)
        reader, writer = await asyncio.open_connection(origin.host, origin.port)
        writer.write(
            f"PATCH {target.raw_path_qs} HTTP/1.1\r\nHost: {origin.raw_authority}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {DECLARED}\r\n\r\n".encode()
        )
        upload = cls(reader, writer, interval)
        await upload.first_byte.wait()
        return upload

    async def _trickle(self) -> None:
        try:
            while self.sent < DECLARED:
                self.writer.write(b"x")
                await self.writer.drain()
                self.sent += 1
                self.first_byte.set()
                await asyncio.sleep(self.interval)  # the attack's pace, not a wait
        except ConnectionError:
            self.first_byte.set()

    async def finish(self) -> None:
        """Send the rest of the body at full speed."""
        self.trickle.cancel()
        await asyncio.gather(self.trickle, return_exceptions=True)
        self.writer.write(b"x" * (DECLARED - self.sent))
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            length = int(headers.get("Content-Length", "0"))
            body = await self.reader.readexactly(length) if length else b""
        return int(lines[0].split()[1]), headers, body

    async def close(self) -> None:
        self.trickle.cancel()
        await asyncio.gather(self.trickle, return_exceptions=True)
        self.writer.close()


async def upload_locations(
    http: aiohttp.ClientSession, proxy: str, repo: str, count: int
) -> list[str]:
    locations = []
    for _ in range(count):
        async with http.post(f"{proxy}/v2/{repo}/blobs/uploads/") as started:
            assert started.status == 202, await started.text()
            locations.append(started.headers["Location"])
    return locations


@pytest.fixture
async def attacks() -> AsyncIterator[list[SlowUpload]]:
    running: list[SlowUpload] = []
    yield running
    await asyncio.gather(*(upload.close() for upload in running))


async def timed_status(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status, time.perf_counter() - started


def oci_code(body: bytes) -> str:
    return str(orjson.loads(body)["errors"][0]["code"])


async def test_slow_uploads_do_not_starve_short_requests(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    attacks: list[SlowUpload],
) -> None:
    """The acceptance of the issue: more slow uploads than the transfer pool holds, and a
    manifest GET, a referrers GET and /readyz still answer within 1 s. The body-rate floor and
    the per-client limit are off here, so the separate pools alone must do it."""
    pool = 4
    proxy = await start_proxy(
        registry.url,
        max_connections=pool,
        connect_timeout=1.0,
        min_body_rate=0,
        max_transfers_per_client=0,
    )
    subject = await push_subject_image(http, proxy, repo)
    locations = await upload_locations(http, proxy, repo, pool + 2)
    attacks.extend(await asyncio.gather(*(SlowUpload.open(proxy, loc, 0.5) for loc in locations)))

    # The attack works: a blob download waits for the full transfer pool until it times out.
    blob_url = f"{proxy}/v2/{repo}/blobs/{sha256(b'{}')}"
    while (await timed_status(http, blob_url))[0] != 504:
        pass

    for url, headers in (
        (f"{proxy}/v2/{repo}/manifests/v1", {"Accept": ACCEPT_MANIFESTS}),
        (f"{proxy}/v2/{repo}/referrers/{sha256(subject)}", None),
        (f"{proxy}/readyz", None),
        (f"{proxy}/v2/", None),
    ):
        status, seconds = await timed_status(http, url, headers)
        assert status == 200, url
        assert seconds < 1.0, f"{url} took {seconds:.2f} s under attack"
    assert all(not upload.trickle.done() for upload in attacks), "the attack kept running"


async def test_a_body_below_the_minimum_rate_gets_408_and_frees_its_connection(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    attacks: list[SlowUpload],
) -> None:
    pool = 2
    proxy = await start_proxy(
        registry.url,
        max_connections=pool,
        connect_timeout=1.0,
        min_body_rate=64,
        body_rate_window=0.5,
        max_transfers_per_client=0,
    )
    locations = await upload_locations(http, proxy, repo, pool)
    attacks.extend(await asyncio.gather(*(SlowUpload.open(proxy, loc, 0.1) for loc in locations)))
    for upload in attacks:
        status, headers, body = await upload.answer()
        assert status == 408
        assert headers["Content-Type"].startswith("application/json")
        assert oci_code(body) == "UNSUPPORTED"
        assert upload.sent < 32, "aborted within about one window"

    # Both transfer connections are free again: a whole push goes through at once.
    started = time.perf_counter()
    await push_blob(http, proxy, repo, b"after the slow ones")
    assert time.perf_counter() - started < 1.0
    async with http.get(f"{proxy}/metrics") as response:
        page = await response.text()
    assert 'referrers_proxy_transfers_refused_total{reason="too_slow"} 2.0' in page


async def test_the_per_client_limit_answers_429_and_frees_a_slot_on_completion(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    registry: Registry,
    repo: str,
    attacks: list[SlowUpload],
) -> None:
    limit = 3
    proxy = await start_proxy(registry.url, min_body_rate=0, max_transfers_per_client=limit)
    locations = await upload_locations(http, proxy, repo, limit)
    attacks.extend(await asyncio.gather(*(SlowUpload.open(proxy, loc, 0.5) for loc in locations)))

    async with http.post(f"{proxy}/v2/{repo}/blobs/uploads/") as refused:
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert oci_code(await refused.read()) == "TOOMANYREQUESTS"
    # Short requests are not transfers and are not counted.
    async with http.get(f"{proxy}/v2/") as base:
        assert base.status == 200

    done = attacks[0]
    await done.finish()
    status, _, _ = await done.answer()
    assert status == 202, "the finished upload reached the registry whole"
    await push_blob(http, proxy, repo, b"a slot was freed")
    async with http.get(f"{proxy}/metrics") as response:
        page = await response.text()
    assert 'referrers_proxy_transfers_refused_total{reason="client_limit"} 1.0' in page


async def test_a_paced_body_keeps_its_content_length_upstream(
    http: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    """The pacing wrapper is an async generator, which aiohttp would send chunked; Distribution
    must still get the Content-Length the client sent (and chunks when the client chunked)."""
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        if request.method != "PATCH":  # the start-up probe
            return web.Response(status=404)
        body = await request.read()
        seen.append(
            (request.headers.get("Content-Length"), request.headers.get("Transfer-Encoding"), body)
        )
        return web.Response(status=202)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    try:
        proxy = await start_proxy(str(upstream.make_url("")).rstrip("/"))
        url = f"{proxy}/v2/a/blobs/uploads/some-uuid"

        async def chunked() -> AsyncIterator[bytes]:
            yield b"chunk one, "
            yield b"chunk two"

        async with http.patch(url, data=b"x" * 100_000) as response:
            assert response.status == 202
        async with http.patch(url, data=chunked()) as response:
            assert response.status == 202
    finally:
        await upstream.close()
    assert seen == [("100000", None, b"x" * 100_000), (None, "chunked", b"chunk one, chunk two")]
