"""OpenAPI pieces Litestar cannot infer: the security schemes, the bodies the handlers
read by hand from the stream (openapi_examples.py holds the examples and the answers), and
the operations of ASGI handlers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.params import Parameter, QueryParameter
from litestar.routes import HTTPRoute

from event_metrics.events import EventIn
from event_metrics.openapi_examples import EVENTS_EXAMPLES, POSTHOG_EXAMPLES, SEGMENT_EXAMPLES

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


# --- the bodies the handlers read by hand -------------------------------------------------


def _body(description: str, content: dict[str, OpenAPIMediaType]) -> RequestBody:
    return RequestBody(required=True, description=description, content=content)


@dataclass
class IngestOperation(Operation):
    """POST /events."""

    def __post_init__(self) -> None:
        self.request_body = _body(
            'One event, a JSON array of events, or {"events": [...]}; or NDJSON, one event per '
            "line. Content-Encoding: gzip is accepted.",
            {
                "application/json": OpenAPIMediaType(schema=BODY, examples=EVENTS_EXAMPLES),
                # No example: schemathesis cannot send one (docs/api.md shows NDJSON).
                "application/x-ndjson": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="one event object per line")
                ),
            },
        )


@dataclass
class SegmentOperation(Operation):
    """The Segment routes."""

    def __post_init__(self) -> None:
        self.request_body = _body(
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
        self.request_body = _body(
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


def declare(app: Litestar, declarations: Sequence[HTTPRouteHandler]) -> None:
    """Describe routes that Litestar serves but leaves out of OpenAPI (ASGI handlers) by
    declared handlers with the same path: they are registered in an app that only holds
    them, and their routes join the document's, first, as if they were served."""
    holder = Litestar(route_handlers=list(declarations), openapi_config=None, logging_config=None)
    declared = {r.path: r for r in holder.routes if isinstance(r, HTTPRoute)}
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.included_routes = {**declared, **plugin.included_routes}


# Query parameters that several read routes share, declared once: the same name, wording
# and example wherever they appear in OpenAPI.
WindowStart = Annotated[
    str | None,
    QueryParameter(
        name="from",
        description="window start (inclusive), RFC 3339, whole seconds",
        required=True,
        examples=[Example(value="2026-11-01T00:00:00Z")],
    ),
]
WindowEnd = Annotated[
    str | None,
    QueryParameter(
        name="to",
        description="window end (exclusive), RFC 3339, whole seconds",
        required=True,
        examples=[Example(value="2026-11-02T00:00:00Z")],
    ),
]
EventNameFilter = Annotated[
    str | None,
    Parameter(
        description="only this event; absent means all events",
        examples=[Example(value="product_view")],
    ),
]
BackendChoice = Annotated[
    Literal["postgres", "clickhouse"] | None,
    Parameter(description="engine that answers; default EVENT_METRICS_BACKEND"),
]
