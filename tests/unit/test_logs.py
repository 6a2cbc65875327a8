import io
import logging
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.http.access_log import AccessLogger
from proxy.http.request_id import HEADER, REQUEST_ID, request_id_middleware
from proxy.logs import TEXT_FORMAT, JsonFormatter, RequestIdFilter

SECRET_STATE = "s3cr3t-upload-state"
CREDENTIAL = "Basic YWxpY2U6d29uZGVybGFuZA=="


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines to a buffer, set up as configure_logging sets up the root."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


async def test_records_written_for_a_request_carry_its_id(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured

    async def handler(request: web.Request) -> web.StreamResponse:
        logger.info("recorded %s as a referrer", "sha256:ab")
        return web.Response()

    await request_id_middleware(make_mocked_request("GET", "/", headers={HEADER: "r-42"}), handler)
    logger.warning("no request here")
    inside, outside = _lines(out)
    assert inside["request_id"] == "r-42"
    assert (inside["level"], inside["logger"]) == ("info", "test.logs")
    assert inside["message"] == "recorded sha256:ab as a referrer"
    assert isinstance(inside["time"], str)
    assert datetime.fromisoformat(inside["time"]).utcoffset() is not None
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["level"] == "warning"


def test_exceptions_are_one_field_of_one_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("internal error")
    assert len(out.getvalue().splitlines()) == 1
    (line,) = _lines(out)
    assert "RuntimeError: boom" in str(line["exception"])


def test_only_known_extra_fields_reach_a_json_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.info("x", extra={"status": 200, "authorization": CREDENTIAL})
    (line,) = _lines(out)
    assert line["status"] == 200
    assert "authorization" not in line
    assert CREDENTIAL not in out.getvalue()


def test_text_lines_carry_the_request_id_or_a_dash() -> None:
    formatter = logging.Formatter(TEXT_FORMAT)
    record = logging.LogRecord("proxy.app", logging.INFO, __file__, 1, "hello", None, None)
    RequestIdFilter().filter(record)
    assert formatter.format(record).endswith(" INFO proxy.app -: hello")
    record.request_id = "r-7"
    assert formatter.format(record).endswith(" INFO proxy.app r-7: hello")


def test_access_lines_are_redacted_and_structured(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    request = make_mocked_request(
        "PATCH",
        f"/v2/team/app/blobs/uploads/u1?_state={SECRET_STATE}&digest=sha256:ab",
        headers={"Authorization": CREDENTIAL, HEADER: "r-9"},
    )
    request[REQUEST_ID] = "r-9"
    AccessLogger(logger, "").log(request, web.Response(status=202), 0.01234)
    (line,) = _lines(out)
    assert line["request_id"] == "r-9"
    assert (line["method"], line["status"], line["route"]) == ("PATCH", 202, "upload")
    assert line["target"] == "/v2/team/app/blobs/uploads/u1?_state=REDACTED&digest=sha256:ab"
    assert line["duration_ms"] == 12.3
    assert isinstance(line["bytes"], int)
    assert SECRET_STATE not in out.getvalue()
    assert CREDENTIAL.split()[1] not in out.getvalue()


def test_an_access_line_without_a_request_id_has_none(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """aiohttp answers some malformed requests before any middleware runs."""
    logger, out = captured
    AccessLogger(logger, "").log(make_mocked_request("GET", "/"), web.Response(status=400), 0.0)
    (line,) = _lines(out)
    assert "request_id" not in line
    assert line["route"] == "other"
