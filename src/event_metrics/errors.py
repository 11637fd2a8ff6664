"""The JSON body of every error response, and how a raw ASGI layer sends a JSON answer.

Litestar's exception handlers (app.py) answer with `ErrorBody`; the layers that answer
before or beside Litestar (the fast path, CORS preflights, the HTTP server's own refusals)
write the same struct through `error_json` and `send_json`, so no module writes JSON by
hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Send

# Set in a route's `opt` (Litestar's per-route options) by the routes whose error bodies
# repeat `error` and `detail` as `code` and `message`: RudderStack's SDK retries an error
# whose JSON lacks them. The route says so, not its path.
SDK_ERROR_FIELDS = "sdk_error_fields"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """{"error": code, "detail": what is wrong, "parameter": which one (when one is),
    "request_id": the id the server logged it under (500s only)}."""

    error: Annotated[str, msgspec.Meta(examples=["invalid_parameter"])]
    detail: Annotated[str, msgspec.Meta(examples=["to must be after from"])]
    parameter: Annotated[str, msgspec.Meta(examples=["to"])] | None = None
    request_id: Annotated[str, msgspec.Meta(examples=["5f0c9a1e00000000002a"])] | None = None
    # The same again under the names RudderStack's SDK reads (SDK routes only).
    code: str | None = None
    message: str | None = None


encode = msgspec.json.Encoder().encode


def error_json(error: str, detail: str) -> bytes:
    """An error body as bytes, for the layers that answer without Litestar."""
    return encode(ErrorBody(error=error, detail=detail))


async def send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A whole answer through ASGI: the start, then the body (JSON; none when empty)."""
    sent = list(headers)
    if body:
        sent += [(b"content-type", b"application/json"),
                 (b"content-length", str(len(body)).encode("ascii"))]  # fmt: skip
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status,
                                     "headers": sent}  # fmt: skip
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
