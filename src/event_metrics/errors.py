"""The JSON body of every error response."""

from __future__ import annotations

from typing import Annotated

import msgspec


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
