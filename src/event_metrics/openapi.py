"""OpenAPI pieces Litestar cannot infer: the POST /events body, read by hand from the stream."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from event_metrics.events import EventIn

SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "writeKey": SecurityScheme(
        type="http", scheme="bearer",
        description="A project's write key (emw_...): Authorization: Bearer <key>",
    ),
    "writeKeyBasic": SecurityScheme(
        type="http", scheme="basic",
        description="A project's write key as the Basic user name, empty password "
        "(what Segment-style SDKs send)",
    ),
    "readKey": SecurityScheme(
        type="http", scheme="bearer",
        description="A project's read key (emr_...): Authorization: Bearer <key>",
    ),
    "readKeyBasic": SecurityScheme(
        type="http", scheme="basic", description="A project's read key as the Basic user name",
    ),
}  # fmt: skip
WRITE_KEY: list[SecurityRequirement] = [{"writeKey": []}, {"writeKeyBasic": []}]
READ_KEY: list[SecurityRequirement] = [{"readKey": []}, {"readKeyBasic": []}]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _to_schema(node: dict[str, Any], definitions: dict[str, Any]) -> Schema:
    """Turn msgspec's JSON Schema into Litestar's Schema objects, refs inlined."""
    if "$ref" in node:
        return _to_schema(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties",):
            fields[key] = {k: _to_schema(v, definitions) for k, v in value.items()}
        elif key in ("anyOf", "oneOf", "allOf"):
            fields[_snake(key)] = [_to_schema(v, definitions) for v in value]
        elif key == "items":
            fields[key] = _to_schema(value, definitions)
        elif key == "additionalProperties":
            fields["additional_properties"] = (
                value if isinstance(value, bool) else _to_schema(value, definitions)
            )
        elif key == "type":
            fields[key] = OpenAPIType(value)
        elif key in ("title", "description", "required", "format", "minLength",
                     "maxLength", "enum", "default", "pattern"):  # fmt: skip
            fields[_snake(key)] = value
    return Schema(**fields)


def _documented(struct: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """The struct as clients see it: a field kept as raw JSON text (msgspec.Raw) is a JSON
    object or null on the wire."""
    fields: list[tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(struct):
        kind = dict[str, Any] | None if field.type is msgspec.Raw else field.type
        default = None if field.type is msgspec.Raw else field.default
        if field.required:
            fields.append((field.encode_name, kind))  # type: ignore[arg-type]
        else:
            fields.append((field.encode_name, kind, default))
    return msgspec.defstruct(struct.__name__, fields, forbid_unknown_fields=True)


def _event_schema() -> Schema:
    (ref,), definitions = msgspec.json.schema_components([_documented(EventIn)])
    return _to_schema(ref, definitions)


EVENT = _event_schema()
BODY = Schema(
    one_of=[
        EVENT,
        Schema(type=OpenAPIType.ARRAY, items=EVENT, description="a batch of events"),
        Schema(
            type=OpenAPIType.OBJECT,
            properties={"events": Schema(type=OpenAPIType.ARRAY, items=EVENT)},
            required=["events"],
            description="a batch of events, wrapped",
        ),
    ]
)


@dataclass
class IngestOperation(Operation):
    """POST /events: the handler reads the body itself, so describe it here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description=(
                'One event, a JSON array of events, or {"events": [...]}; or NDJSON, one '
                "event per line. Content-Encoding: gzip is accepted."
            ),
            content={
                "application/json": OpenAPIMediaType(schema=BODY),
                "application/x-ndjson": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="one event object per line")
                ),
            },
        )
