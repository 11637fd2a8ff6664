"""The JSON body of every error response."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """{"error": code, "detail": what is wrong, "parameter": which one (when one is)}."""

    error: str
    detail: str
    parameter: str | None = None
