"""A request id for every HTTP request: taken from a sane incoming X-Request-Id or made
up, echoed in the response's X-Request-Id header, and put on every log line written
while the request runs."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Made-up ids: a random per-process prefix and a counter, unique without the 3 us of a
# uuid4 on every request.
_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)

HEADER = b"x-request-id"
# A client's own id is kept only when it is short and plain, so it cannot forge log lines.
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def _incoming(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode("ascii") if _SANE.fullmatch(value) else None
    return None


def middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: set the request id for the request and add it to the response."""

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _incoming(scope) or f"{_PREFIX}{next(_counter):012x}"
        token = current.set(request_id)
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            current.reset(token)

    return with_request_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True
