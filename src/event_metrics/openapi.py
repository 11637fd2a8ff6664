"""OpenAPI pieces Litestar cannot infer: the security schemes, the bodies the handlers
read by hand from the stream (openapi_examples.py holds the examples and the answers), and
schemas of msgspec types for the entry of the ASGI route (http_fast.py)."""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
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
from event_metrics.openapi_examples import POSTHOG_EXAMPLES, SEGMENT_EXAMPLES

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


COMPONENTS = "#/components/schemas/"


def _to_schema(node: dict[str, Any], definitions: dict[str, Any] | None) -> Any:
    """Turn msgspec's JSON Schema into Litestar's Schema objects: refs inlined from
    `definitions`, or kept as references to the document's components (None)."""
    if "$ref" in node:
        if definitions is None:
            return Reference(ref=node["$ref"])
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
                     "maxLength", "enum", "default", "pattern", "examples"):  # fmt: skip
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
    schema: Schema = _to_schema(ref, definitions)
    return schema


def schemas_of(types: Sequence[Any]) -> tuple[list[Any], dict[str, Schema]]:
    """Each type's schema (a reference for a struct; one of its members' for a union of
    structs, which msgspec describes only when tagged), and the component schemas the
    references name."""
    members = [typing.get_args(kind) or (kind,) for kind in types]
    flat = [member for group in members for member in group]
    refs, components = msgspec.json.schema_components(flat, ref_template=COMPONENTS + "{name}")
    schemas = iter([_to_schema(ref, None) for ref in refs])
    described = []
    for group in members:
        parts = [next(schemas) for _ in group]
        described.append(parts[0] if len(parts) == 1 else Schema(one_of=parts))
    return described, {name: _to_schema(node, None) for name, node in components.items()}


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


# --- the bodies the handlers read by hand -------------------------------------------------


def request_body(description: str, content: dict[str, OpenAPIMediaType]) -> RequestBody:
    return RequestBody(required=True, description=description, content=content)


@dataclass
class SegmentOperation(Operation):
    """The Segment routes."""

    def __post_init__(self) -> None:
        self.request_body = request_body(
            '{"batch": [messages], "sentAt", "writeKey"} on /v1/batch, /v1/import and /v1/b; '
            "one message on the other paths. Also sent as text/plain, or gzipped.",
            {
                "application/json": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT), examples=SEGMENT_EXAMPLES
                )
            },
        )


@dataclass
class PostHogOperation(Operation):
    """The PostHog routes."""

    def __post_init__(self) -> None:
        self.request_body = request_body(
            '{"api_key", "batch": [events], "sent_at"}, one event with its api_key, or an array '
            "of events. Also sent as text/plain, gzipped, or as a form whose data field is "
            "base64.",
            {
                "application/json": OpenAPIMediaType(
                    schema=Schema(type=[OpenAPIType.OBJECT, OpenAPIType.ARRAY]),
                    examples=POSTHOG_EXAMPLES,
                )
            },
        )
