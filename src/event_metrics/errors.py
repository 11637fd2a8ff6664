"""The JSON body of every error response."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """{"error": code, "detail": what is wrong, "parameter": which one (when one is),
    "request_id": the id the server logged it under (on 500s)}."""

    error: str
    detail: str
    parameter: str | None = None
    request_id: str | None = None
    # The same again under the names RudderStack's SDK reads (SDK routes only).
    code: str | None = None
    message: str | None = None
