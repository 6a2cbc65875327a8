from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from proxy.http.forward import LARGE_BODY, LARGE_READ, large_reads

ASYNCIO_DEFAULT = 256 * 1024


def response(content_length: int | None, transport: Any) -> aiohttp.ClientResponse:
    connection = SimpleNamespace(transport=transport) if transport is not None else None
    return cast(
        aiohttp.ClientResponse,
        SimpleNamespace(content_length=content_length, connection=connection),
    )


def test_a_large_body_is_read_in_large_pieces_then_the_transport_is_restored() -> None:
    transport = SimpleNamespace(max_size=ASYNCIO_DEFAULT)
    with large_reads(response(LARGE_BODY, transport)):
        assert transport.max_size == LARGE_READ
    assert transport.max_size == ASYNCIO_DEFAULT


def test_restored_when_the_relay_fails() -> None:
    transport = SimpleNamespace(max_size=ASYNCIO_DEFAULT)
    with (
        pytest.raises(aiohttp.ClientPayloadError),
        large_reads(response(2 * LARGE_BODY, transport)),
    ):
        raise aiohttp.ClientPayloadError("reset")
    assert transport.max_size == ASYNCIO_DEFAULT


@pytest.mark.parametrize("content_length", [None, 0, LARGE_BODY - 1])
def test_small_or_unknown_bodies_keep_the_default(content_length: int | None) -> None:
    transport = SimpleNamespace(max_size=ASYNCIO_DEFAULT)
    with large_reads(response(content_length, transport)):
        assert transport.max_size == ASYNCIO_DEFAULT


@pytest.mark.parametrize("transport", [None, SimpleNamespace(), SimpleNamespace(max_size="big")])
def test_transports_without_asyncio_reads_are_left_alone(transport: Any) -> None:
    with large_reads(response(LARGE_BODY, transport)):
        pass
    assert transport is None or getattr(transport, "max_size", None) in (None, "big")
