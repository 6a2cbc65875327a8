import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.tracing import TraceRequestStartParams
from multidict import CIMultiDict
from yarl import URL

from proxy.http.request_id import (
    HEADER,
    MAX_LENGTH,
    REQUEST_ID,
    accepted_request_id,
    current_request_id,
    echo_request_id,
    new_request_id,
    request_id_middleware,
    send_request_id,
)


@pytest.mark.parametrize(
    "value",
    [
        "0f9c41e2",
        "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "Root=1-5759e988-bd862e3fe1be46a994272793",
        "svc.a:span/7+x",
        "x" * MAX_LENGTH,
    ],
)
def test_sane_client_ids_are_kept(value: str) -> None:
    assert accepted_request_id(value) == value


@pytest.mark.parametrize(
    "value",
    [None, "", "x" * (MAX_LENGTH + 1), "two words", "line\nbreak", 'quote"d', "caf\u00e9", "a;b"],
)
def test_other_ids_are_refused(value: str | None) -> None:
    assert accepted_request_id(value) is None


def test_new_ids_are_unique_and_acceptable() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert len(value) == 32
        assert accepted_request_id(value) == value


async def _seen_by_handler(headers: dict[str, str]) -> tuple[str | None, web.Request]:
    request = make_mocked_request("GET", "/v2/", headers=headers)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(current_request_id())
        return web.Response()

    await request_id_middleware(request, handler)
    assert current_request_id() is None, "reset once the handler is done"
    return seen[0], request


async def test_the_middleware_keeps_a_sane_id_for_the_handler_and_the_answer() -> None:
    seen, request = await _seen_by_handler({HEADER: "client-1"})
    assert seen == request[REQUEST_ID] == "client-1"
    response = web.Response()
    await echo_request_id(request, response)
    assert response.headers[HEADER] == "client-1"


async def test_the_middleware_replaces_an_unsafe_id() -> None:
    seen, request = await _seen_by_handler({HEADER: "evil\tid"})
    assert seen == request[REQUEST_ID]
    assert seen is not None
    assert len(seen) == 32
    assert seen != "evil\tid"


async def test_upstream_calls_carry_the_current_id_not_the_clients() -> None:
    headers: CIMultiDict[str] = CIMultiDict({HEADER: "evil id"})
    params = TraceRequestStartParams("GET", URL("http://upstream/v2/"), headers)
    await send_request_id(None, None, params)  # type: ignore[arg-type]
    assert headers[HEADER] == "evil id", "outside a request nothing is set"
    request = make_mocked_request("GET", "/v2/", headers={HEADER: "evil id"})

    async def handler(request: web.Request) -> web.StreamResponse:
        await send_request_id(None, None, params)  # type: ignore[arg-type]
        return web.Response()

    await request_id_middleware(request, handler)
    assert headers.getall(HEADER) == [request[REQUEST_ID]]
