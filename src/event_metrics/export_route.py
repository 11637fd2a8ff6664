"""GET /export: a project's events as NDJSON, streamed (export.py reads them).

Memory stays constant whatever the window: one page of rows at a time, and the next page
is read only once the ASGI server has taken the previous one (uvicorn's `send` waits
while the client's socket buffer is full). Errors found before the first byte (a bad
parameter, a key, a database that is down, too many exports) are JSON answers like every
route's; a failure after the 200 has started aborts the response, so the client sees a
truncated transfer (no final chunk), never a file that looks complete.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Annotated, Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Parameter, QueryParameter
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from event_metrics import export
from event_metrics.auth import secret_from_headers
from event_metrics.metrics import BackendUnavailable
from event_metrics.openapi import READ_KEY
from event_metrics.openapi_examples import EXPORT_RESPONSES
from event_metrics.postgres import TRANSIENT_ERRORS
from event_metrics.retry import describe
from event_metrics.services import Services

PATH = "/export"
MEDIA_TYPE = "application/x-ndjson"
# Level 1: a gzip stream keeps up with the database pages (level 6 took three times the
# CPU for a tenth less bytes on exported events); the client can recompress.
GZIP_LEVEL = 1


def accepts_gzip(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether Accept-Encoding allows gzip (`gzip`, `x-gzip` or `*`, not with q=0)."""
    for name, value in headers:
        if name != b"accept-encoding":
            continue
        for item in value.decode("latin-1").lower().split(","):
            coding, _, params = item.strip().partition(";")
            if coding.strip() not in ("gzip", "x-gzip", "*"):
                continue
            quality = params.strip().removeprefix("q=").strip() if params else "1"
            try:
                if float(quality) > 0:
                    return True
            except ValueError:
                continue
    return False


class _ClosingStream(ASGIStreamingResponse):
    """A streaming response that closes its generator however the response ends: when
    the client goes away, Litestar cancels the sending task, which would otherwise leave
    the generator (and its database connection) to the garbage collector."""

    __slots__ = ()  # the layout of its parent, so a response of that class can become one

    async def send_body(self, send: Send, receive: Receive) -> None:
        try:
            await super().send_body(send, receive)
        finally:
            close = getattr(self.iterator, "aclose", None)
            if close is not None:
                await close()


class _ExportStream(Stream):
    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        plain = super().to_asgi_response(*args, **kwargs)
        assert isinstance(plain, ASGIStreamingResponse)
        # Litestar builds the response (headers, cookies, media type); only how its body
        # ends differs, so the object it built takes the subclass.
        plain.__class__ = _ClosingStream
        return plain


async def _body(
    first: list[Any],
    rest: AsyncGenerator[list[Any], None],
    stack: contextlib.AsyncExitStack,
    gzip: bool,
) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(GZIP_LEVEL, wbits=31) if gzip else None
    try:
        page: list[Any] | None = first
        while page is not None:
            chunk = export.encode_lines(page)
            if compressor is not None:
                chunk = compressor.compress(chunk)
            if chunk:
                yield chunk
            page = await anext(rest, None)
        if compressor is not None:
            yield compressor.flush()
    finally:
        await stack.aclose()  # ends the snapshot, then closes the connection


@get(
    PATH,
    security=READ_KEY,
    summary="Export events as NDJSON, in timestamp order",
    description=(
        "Every event of the key's project in [from, to), one per line, in the format POST "
        "/events takes, oldest first: re-importing the file stores nothing twice (the "
        "idempotency keys are kept). gzip when Accept-Encoding allows it. Streamed from one "
        "snapshot of PostgreSQL with constant memory, whatever the window."
    ),
    media_type=MEDIA_TYPE,
    responses=EXPORT_RESPONSES,
)
async def export_events(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    start: Annotated[
        str | None,
        QueryParameter(
            name="from",
            description="window start (inclusive), RFC 3339; absent: the first event",
            examples=[Example(value="2026-11-01T00:00:00Z")],
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            name="to",
            description="window end (exclusive), RFC 3339; absent: the last event",
            examples=[Example(value="2026-12-01T00:00:00Z")],
        ),
    ] = None,
    event_name: Annotated[
        str | None,
        Parameter(
            description="only this event; absent means all events",
            examples=[Example(value="product_view")],
        ),
    ] = None,
) -> Stream:
    headers = request.scope["headers"]
    secret = secret_from_headers(headers)
    keys = services.keys
    project_id = keys.authorize_checked(secret, "read") or await keys.authorize(secret, "read")
    window = export.parse_window(project_id=project_id, start=start, end=end, event_name=event_name)
    exporter = services.exporter
    stack = contextlib.AsyncExitStack()
    try:
        connection = await stack.enter_async_context(exporter.connection())
        rest = export.pages(connection, window, page_rows=exporter.page_rows)
        stack.push_async_callback(rest.aclose)
        # The first page before the 200: a database that fails, fails as a 503 here.
        first: list[Any] = await anext(rest, [])
    except TRANSIENT_ERRORS as exc:
        await stack.aclose()
        raise BackendUnavailable(f"PostgreSQL is unavailable: {describe(exc)}") from None
    except BaseException:
        await stack.aclose()
        raise
    gzip = accepts_gzip(headers)
    response_headers = {"Vary": "Accept-Encoding"}
    if gzip:
        response_headers["Content-Encoding"] = "gzip"
    return _ExportStream(
        _body(first, rest, stack, gzip), media_type=MEDIA_TYPE, headers=response_headers
    )
