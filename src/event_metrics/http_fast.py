"""POST /events, the fast path, in one room: a raw ASGI route, and its OpenAPI entry built
from the same definition.

Most traffic is single events, and Litestar's per-request machinery for a declared
handler (signature model, kwargs, response object) costs about a third of a single event's
CPU (docs/benchmarks.md, "Single events"). So for this route this module does what Litestar
does for the others, and nothing elsewhere does it: method dispatch, the typed query
parameter, authentication, the services lookup and the JSON send. Errors are raised, and
the app's exception handlers answer them as for every route. Litestar leaves ASGI routes
out of its OpenAPI document; `describe` adds this one's entry to the app's document.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from litestar import Litestar, asgi
from litestar.exceptions import MethodNotAllowedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    Schema,
)
from litestar.types import HTTPScope, Receive, Send

from event_metrics import access_log, openapi
from event_metrics.auth import secret_from_headers
from event_metrics.errors import encode, send_json
from event_metrics.metrics import InvalidParameter
from event_metrics.openapi_examples import EVENTS_EXAMPLES, INGEST_RESPONSES
from event_metrics.payload import body_headers, media_type, read_request_body, split_events
from event_metrics.services import Services

PATH = "/events"
METHOD = "POST"
# What Litestar answers to OPTIONS on its declared routes, and names in a 405.
ALLOW = b"OPTIONS, POST"


@dataclass(frozen=True)
class Flag:
    """A boolean query parameter: what it is read as, and how OpenAPI describes it."""

    name: str
    default: bool
    description: str

    _VALUES = {"true": True, "1": True, "false": False, "0": False}  # noqa: RUF012 - a constant

    def read(self, query: bytes) -> bool:
        """As Litestar reads a declared bool: true, false, 1 or 0 in any case, the last one
        when repeated, the default when absent; anything else is a 400 naming it."""
        if self.name.encode() not in query:
            return self.default
        values = [
            v
            for n, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if n == self.name
        ]
        if not values:
            return self.default
        value = self._VALUES.get(values[-1].lower())
        if value is None:
            raise InvalidParameter(self.name, f"{self.name} must be true or false")
        return value

    def parameter(self) -> Parameter:
        schema = Schema(
            type=OpenAPIType.BOOLEAN, default=self.default, description=self.description
        )
        return Parameter(name=self.name, param_in="query", schema=schema, required=False,
                         description=self.description)  # fmt: skip


WAIT = Flag(
    "wait",
    default=True,
    description="true (default): answer after the database commit, so a 200 means stored. "
    "false: answer 202 as soon as the events are queued; events queued but not yet committed "
    "are lost if the process is killed (SIGKILL, power loss), so use it only where losing a "
    "few events is acceptable.",
)


@asgi(PATH, copy_scope=False)  # nothing mutates the scope; no copy per request
async def ingest(scope: HTTPScope, receive: Receive, send: Send) -> None:
    """POST /events: one event, a JSON array of them, {"events": [...]}, or NDJSON."""
    method = scope["method"]
    if method != METHOD:
        if method == "OPTIONS":
            await send_json(send, 204, b"", [(b"allow", ALLOW)])
            return
        raise MethodNotAllowedException(headers={"Allow": ALLOW.decode()})
    # The app's lifespan put the running services in its state (the other routes get them
    # by dependency injection, which an ASGI route does not take).
    services: Services = scope["litestar_app"].state.services
    wait = WAIT.read(scope["query_string"])
    # The key first: a request without one is refused before its body is read. A key
    # checked before needs no await.
    secret = secret_from_headers(scope["headers"])
    keys = services.keys
    project_id = keys.authorize_checked(secret, "write") or await keys.authorize(secret, "write")
    access_log.note_project(project_id)
    ingestor = services.ingestor
    settings = ingestor.settings
    headers = body_headers(scope["headers"])
    kind = media_type(headers.content_type)
    body = await read_request_body(receive, headers, max_bytes=settings.max_body_bytes)
    items = split_events(body, kind=kind, max_events=settings.max_events_per_request)
    parsed = await ingestor.parse_native(items, project_id)
    answer, status = await ingestor.submit(parsed, wait=wait)
    await send_json(send, status, encode(answer))


# --- the OpenAPI entry ------------------------------------------------------------------------


def _responses(
    specs: dict[int, ResponseSpec],
) -> tuple[dict[str, OpenAPIResponse | Reference], dict[str, Schema]]:
    """The responses of the entry, and the schemas they refer to (for the components)."""
    refs, components = openapi.schemas_of([spec.data_container for spec in specs.values()])
    responses: dict[str, OpenAPIResponse | Reference] = {}
    for (status, spec), ref in zip(specs.items(), refs, strict=True):
        examples: dict[str, Example | Reference] = {
            example.id: example for example in spec.examples or () if example.id
        }
        content = {"application/json": OpenAPIMediaType(schema=ref, examples=examples)}
        responses[str(status)] = OpenAPIResponse(description=spec.description or "",
                                                 content=content)  # fmt: skip
    return responses, components


def path_item() -> tuple[PathItem, dict[str, Schema]]:
    """The route's OpenAPI entry, and the component schemas it refers to."""
    responses, components = _responses(INGEST_RESPONSES)
    operation = Operation(
        operation_id="EventsIngest",
        summary="Ingest one event or a batch",
        description='Body: an event, a JSON array of events, {"events": [...]}, or NDJSON. '
        "Answered after the events are committed (200, or 400 if any event was rejected); "
        "?wait=false answers 202 once the events are queued.",
        parameters=[WAIT.parameter()],
        request_body=openapi.request_body(
            'One event, a JSON array of events, or {"events": [...]}; or NDJSON, one event per '
            "line. Content-Encoding: gzip is accepted.",
            {
                "application/json": OpenAPIMediaType(schema=openapi.BODY, examples=EVENTS_EXAMPLES),
                # No example: schemathesis cannot send one (docs/api.md shows NDJSON).
                "application/x-ndjson": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="one event object per line")
                ),
            },
        ),
        responses=responses,
        security=openapi.WRITE_KEY,
    )
    return PathItem(post=operation), components


def describe(app: Litestar) -> None:
    """Add the route's entry to the app's OpenAPI document, first, as if Litestar served it
    (the document is built once; Litestar rebuilds it only when a route is registered)."""
    document = app.openapi_schema
    item, components = path_item()
    document.paths = {PATH: item, **(document.paths or {})}
    schemas = document.components.schemas
    for name, schema in components.items():
        schemas.setdefault(name, schema)
