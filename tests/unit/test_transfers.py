from __future__ import annotations

import asyncio

import pytest

from proxy.http.transfers import BodyTooSlow, ClientTransfers, PacedBody, client_keys, is_transfer

WINDOW = 0.05


class Trickle:
    """A request body fed by the test, chunk by chunk; b"" ends it."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def readany(self) -> bytes:
        return await self.chunks.get()


async def collect(body: PacedBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v2/a/b/blobs/sha256:abc", True),
        ("HEAD", "/v2/a/b/blobs/sha256:abc", False),
        ("DELETE", "/v2/a/b/blobs/sha256:abc", False),
        ("POST", "/v2/a/blobs/uploads/", True),
        ("PATCH", "/v2/a/blobs/uploads/uuid", True),
        ("PUT", "/v2/a/blobs/uploads/uuid", True),
        ("GET", "/v2/a/manifests/v1", False),
        ("GET", "/v2/blobs/manifests/v1", False),
        ("GET", "/v2/a/referrers/sha256:abc", False),
        ("GET", "/v2/a/tags/list", False),
        ("GET", "/v2/_catalog", False),
        ("GET", "/v2/", False),
    ],
)
def test_only_blob_bodies_and_uploads_are_transfers(method: str, path: str, expected: bool) -> None:
    assert is_transfer(method, path) is expected


async def test_a_body_that_keeps_the_rate_passes_through_whole() -> None:
    stream = Trickle()
    for part in (b"a" * 10, b"b" * 10, b""):
        stream.chunks.put_nowait(part)
    body = PacedBody(stream, min_rate=100, window=WINDOW)
    assert await collect(body) == b"a" * 10 + b"b" * 10
    assert not body.too_slow


async def test_a_body_that_stalls_is_cut_after_one_window() -> None:
    stream = Trickle()
    stream.chunks.put_nowait(b"x")
    body = PacedBody(stream, min_rate=100, window=WINDOW)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BodyTooSlow):
        await collect(body)
    assert body.too_slow
    assert asyncio.get_running_loop().time() - started < 10 * WINDOW


async def test_a_trickle_below_the_rate_is_cut_though_bytes_keep_coming() -> None:
    stream = Trickle()
    body = PacedBody(stream, min_rate=1000, window=WINDOW)  # 50 bytes per window

    async def one_byte_at_a_time() -> None:
        while True:
            stream.chunks.put_nowait(b"x")
            await asyncio.sleep(WINDOW / 5)

    feeder = asyncio.create_task(one_byte_at_a_time())
    try:
        with pytest.raises(BodyTooSlow):
            await collect(body)
    finally:
        feeder.cancel()


async def test_time_the_upstream_takes_is_not_charged_to_the_client() -> None:
    stream = Trickle()
    for part in (b"a", b"b", b"c", b""):
        stream.chunks.put_nowait(part)
    body = PacedBody(stream, min_rate=1000, window=WINDOW)
    received = []
    async for chunk in body.chunks():
        received.append(chunk)
        await asyncio.sleep(2 * WINDOW)  # a slow upstream: the client's bytes were waiting
    assert received == [b"a", b"b", b"c"]


def test_client_keys_hash_the_credential_and_skip_what_is_missing() -> None:
    keys = client_keys("10.0.0.1", "Basic c2VjcmV0")
    assert keys[0] == "address:10.0.0.1"
    assert keys[1].startswith("credential:")
    assert "c2VjcmV0" not in keys[1]
    assert client_keys("10.0.0.1", None) == ("address:10.0.0.1",)
    assert client_keys(None, None) == ()


def test_each_address_and_credential_is_limited_and_forgotten_when_idle() -> None:
    clients = ClientTransfers(2)
    alice_here = client_keys("10.0.0.1", "Bearer alice")
    alice_there = client_keys("10.0.0.2", "Bearer alice")
    anonymous_here = client_keys("10.0.0.1", None)
    bob_elsewhere = client_keys("10.0.0.3", "Bearer bob")

    assert clients.admit(alice_here)
    assert clients.admit(alice_there)
    assert not clients.admit(alice_here), "alice's credential is at its limit"
    assert clients.admit(anonymous_here), "10.0.0.1 runs one"
    assert not clients.admit(anonymous_here), "10.0.0.1 is at its limit"
    assert clients.admit(bob_elsewhere)

    for keys in (alice_here, alice_there, anonymous_here, bob_elsewhere):
        clients.release(keys)
    assert not clients.running, "idle clients leave no state behind"


def test_zero_means_no_limit_and_no_state() -> None:
    clients = ClientTransfers(0)
    keys = client_keys("10.0.0.1", None)
    assert all(clients.admit(keys) for _ in range(1000))
    clients.release(keys)
    assert not clients.running
