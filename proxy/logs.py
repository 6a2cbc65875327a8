"""Log set-up: plain text for people, or one JSON object per line for log pipelines.

Both carry the request id of the request a record was written for. A JSON line holds a fixed
set of fields and nothing else, so an `extra` passed by some library never lands in it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from proxy.config import LogFormat
from proxy.http.request_id import NO_REQUEST_ID, current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(request_id)s: %(message)s"
# What the access log adds to its records (see observability.AccessLogger).
ACCESS_FIELDS = ("remote", "method", "target", "status", "bytes", "duration_ms", "route")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id, unless it already carries one (the
    access log's, written after the handler's context is gone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or NO_REQUEST_ID
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", NO_REQUEST_ID)
        if request_id != NO_REQUEST_ID:
            entry["request_id"] = request_id
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
