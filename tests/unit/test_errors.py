"""The one error middleware: what a client is told, and what the log keeps of upstream faults."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.http.errors import error_middleware

SECRET_URL = "http://registry:5000/v2/a/blobs/uploads/u?_state=SECRET-STATE"


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (aiohttp.ConnectionTimeoutError(f"Connection timeout to host {SECRET_URL}"), 504),
        (aiohttp.ClientConnectionError(f"cannot reach {SECRET_URL}"), 502),
    ],
)
async def test_upstream_faults_are_logged_without_their_urls(
    fault: Exception, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing(request: web.Request) -> web.Response:
        raise fault

    app = web.Application(middlewares=[error_middleware])
    app.router.add_route("PATCH", "/{tail:.*}", failing)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.WARNING):
            response = await client.patch("/v2/a/blobs/uploads/u?_state=SECRET-STATE")
        assert response.status == status
        assert "SECRET" not in await response.text()
    assert type(fault).__name__ in caplog.text
    assert "SECRET" not in caplog.text
