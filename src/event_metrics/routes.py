"""HTTP handlers: POST /events, the Segment and PostHog SDK routes, GET /metrics,
GET /health and GET /internal/metrics (Prometheus)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
from litestar import Request, Response, asgi, get, post
from litestar.di import NamedDependency
from litestar.exceptions import MethodNotAllowedException
from litestar.openapi.spec import Example
from litestar.params import Parameter, QueryParameter
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Receive, Send

from event_metrics import posthog, sdk, segment, telemetry
from event_metrics.auth import secret_from_headers
from event_metrics.ingest import IngestResponse, Protocol
from event_metrics.metrics import InvalidParameter, MetricsResponse, parse_query
from event_metrics.openapi import (
    READ_KEY,
    WRITE_KEY,
    IngestOperation,
    PostHogOperation,
    SegmentOperation,
)
from event_metrics.openapi_examples import (
    HEALTH_RESPONSES,
    INGEST_RESPONSES,
    METRICS_RESPONSES,
    POSTHOG_RESPONSES,
    SEGMENT_RESPONSES,
)
from event_metrics.payload import body_headers, media_type, read_request_body, split_events
from event_metrics.services import Health, Services

# Routes that take events (CORS: any origin by default) and that read metrics.
SDK_PATHS = (*segment.PATHS, *posthog.PATHS)
INGEST_PATHS = ("/events", *SDK_PATHS)
READ_PATHS = ("/metrics",)


async def _sdk_ingest(
    protocol: Protocol, request: Request[Any, Any, Any], services: Services
) -> Response[dict[str, Any]]:
    ingestor = services.ingestor
    headers = body_headers(request.scope["headers"])
    body = await read_request_body(
        request.receive, headers, max_bytes=ingestor.settings.max_body_bytes
    )
    text = sdk.json_body(
        body, content_type=headers.content_type, max_bytes=ingestor.settings.max_body_bytes
    )
    answer = await ingestor.ingest_sdk(
        protocol,
        text,
        path=request.scope["path"],
        query=dict(request.query_params),
        header_key=secret_from_headers(request.scope["headers"]),
        keys=services.keys,
    )
    return Response(answer, status_code=200)


@post(
    list(segment.PATHS),
    summary="Segment and RudderStack SDKs: batches and single messages",
    description=(
        'Segment\'s tracking API: /v1/batch and /v1/import take {"batch": [messages], '
        '"sentAt", "writeKey"}; /v1/track, /identify, /page, /screen, /group, /alias and '
        "/v1/t, /i, /p, /s, /g, /a take one message. The write key is the Basic user name or "
        "the body's writeKey. JSON, text/plain JSON, or gzip. Always 200 with "
        '{"success": true} once the valid messages are committed; rejected messages are '
        "listed in the body (docs/api.md maps every field)."
    ),
    status_code=200,
    request_max_body_size=None,
    security=WRITE_KEY,
    operation_class=SegmentOperation,
    responses=SEGMENT_RESPONSES,
)
async def segment_ingest(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[dict[str, Any]]:
    return await _sdk_ingest("segment", request, services)


@post(
    list(posthog.PATHS),  # with or without a trailing slash: Litestar matches both
    summary="PostHog SDKs: capture and batch",
    description=(
        'PostHog\'s capture API (posthog-python, posthog-js, ...): {"api_key", "batch": '
        '[events], "sent_at"}, a single event, or an array of events. The project token is '
        "api_key or token in the body, properties.token, or a Bearer key. JSON, text/plain, "
        "gzip (with or without Content-Encoding), or a form whose data field is base64. "
        'Always 200 with {"status": 1} once the valid events are committed.'
    ),
    status_code=200,
    request_max_body_size=None,
    security=WRITE_KEY,
    operation_class=PostHogOperation,
    responses=POSTHOG_RESPONSES,
)
async def posthog_ingest(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[dict[str, Any]]:
    return await _sdk_ingest("posthog", request, services)


@asgi("/events", copy_scope=False)  # nothing mutates the scope; no copy per request
async def ingest(scope: HTTPScope, receive: Receive, send: Send) -> None:
    """POST /events, as a plain ASGI handler.

    Most traffic is single events, and Litestar's per-request machinery for a declared
    handler (signature model, kwargs, response object) costs about a third of a single
    event's CPU (docs/benchmarks.md, "Single events"). So this route reads the scope
    itself; errors still go through the app's exception handlers, and OpenAPI describes
    it from `ingest_declaration` below.
    """
    method = scope["method"]
    if method != "POST":
        if method == "OPTIONS":  # what Litestar answers for its declared routes
            await _send_json(send, 204, b"", [(b"allow", b"OPTIONS, POST")])
            return
        raise MethodNotAllowedException(headers={"Allow": "POST, OPTIONS"})
    # The one handler without dependency injection: an ASGI handler takes none.
    services: Services = scope["litestar_app"].state.services
    wait = wait_parameter(scope["query_string"])
    # The key first: a request without one is refused before its body is read.
    secret = secret_from_headers(scope["headers"])
    keys = services.keys
    project_id = keys.authorize_checked(secret, "write") or await keys.authorize(secret, "write")
    ingestor = services.ingestor
    settings = ingestor.settings
    headers = body_headers(scope["headers"])
    kind = media_type(headers.content_type)
    body = await read_request_body(receive, headers, max_bytes=settings.max_body_bytes)
    items = split_events(body, kind=kind, max_events=settings.max_events_per_request)
    answer, status = await ingestor.submit(ingestor.parse_native(items, project_id), wait=wait)
    await _send_json(send, status, _encode(answer))


_encode = msgspec.json.Encoder().encode


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = list(extra or [])
    if body:
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii"))]  # fmt: skip
    start: HTTPResponseStartEvent = {
        "type": "http.response.start", "status": status, "headers": headers
    }  # fmt: skip
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


_WAIT_VALUES = {"true": True, "1": True, "false": False, "0": False}


def wait_parameter(query: bytes) -> bool:
    """`?wait=` of POST /events, read as Litestar reads a declared bool: true, false, 1 or 0
    in any case, the last one when repeated, true when absent; anything else is a 400."""
    if b"wait" not in query:
        return True
    values = [
        v for n, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if n == "wait"
    ]
    if not values:
        return True
    wait = _WAIT_VALUES.get(values[-1].lower())
    if wait is None:
        raise InvalidParameter("wait", "wait must be true or false")
    return wait


@post(
    "/events",
    security=WRITE_KEY,
    summary="Ingest one event or a batch",
    description=(
        'Body: an event, a JSON array of events, {"events": [...]}, or NDJSON. Answered '
        "after the events are committed (200, or 400 if any event was rejected); "
        "?wait=false answers 202 once the events are queued."
    ),
    status_code=200,
    request_max_body_size=None,  # read_body enforces the limit, before and after gunzip
    operation_class=IngestOperation,
    responses=INGEST_RESPONSES,
)
async def ingest_declaration(
    request: Request[Any, Any, Any],
    wait: Annotated[
        bool,
        Parameter(
            description="true (default): answer after the database commit, so a 200 means "
            "stored. false: answer 202 as soon as the events are queued; events queued but "
            "not yet committed are lost if the process is killed (SIGKILL, power loss), so "
            "use it only where losing a few events is acceptable."
        ),
    ] = True,
) -> Response[IngestResponse]:
    """What OpenAPI says about POST /events. Litestar leaves ASGI handlers out of the
    document, so create_app adds this declaration to it; `ingest` serves the route."""
    raise NotImplementedError("POST /events is served by routes.ingest")


@get(
    "/metrics",
    security=READ_KEY,
    summary="Total events and exact unique users, bucketed and grouped",
    responses=METRICS_RESPONSES,
)
async def metrics(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    start: Annotated[
        str | None,
        QueryParameter(
            name="from",
            description="window start (inclusive), RFC 3339, whole seconds",
            required=True,
            examples=[Example(value="2026-11-01T00:00:00Z")],
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            name="to",
            description="window end (exclusive), RFC 3339, whole seconds",
            required=True,
            examples=[Example(value="2026-11-02T00:00:00Z")],
        ),
    ] = None,
    event_name: Annotated[
        str | None,
        Parameter(
            description="only this event; absent means all events",
            examples=[Example(value="product_view")],
        ),
    ] = None,
    granularity: Annotated[
        str | None,
        Parameter(
            description="hour, day, week, month or total (default)",
            examples=[Example(value="hour")],
        ),
    ] = None,
    group_by: Annotated[
        str | None,
        Parameter(
            description="channel, event_name, or both comma-separated",
            examples=[Example(value="channel")],
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        Parameter(
            description="IANA time zone for buckets (default UTC)",
            examples=[Example(value="Europe/Berlin")],
        ),
    ] = None,
    backend: Annotated[
        Literal["postgres", "clickhouse"] | None,
        Parameter(description="engine that answers; default EVENT_METRICS_BACKEND"),
    ] = None,
    plan: Annotated[
        Literal["auto", "raw", "rollup"] | None,
        Parameter(
            description="PostgreSQL only: auto (default) uses rollups when they are not "
            "lagging; raw scans the events table; rollup always uses rollups"
        ),
    ] = None,
) -> Response[MetricsResponse]:
    secret = secret_from_headers(request.scope["headers"])
    keys = services.keys
    project_id = keys.authorize_checked(secret, "read") or await keys.authorize(secret, "read")
    metrics_service = services.metrics
    query = parse_query(
        project_id=project_id,
        start=start,
        end=end,
        event_name=event_name,
        granularity=granularity,
        group_by=group_by,
        timezone=timezone,
        max_window_days=metrics_service.settings.metrics.max_window_days,
    )
    answer, used = await metrics_service.answer(query, backend=backend, plan=plan)
    return Response(answer, headers={"X-Metrics-Plan": used})


@get(
    "/health",
    summary="Liveness of PostgreSQL, the writers, replication and rollups",
    responses=HEALTH_RESPONSES,
)
async def health(services: NamedDependency[Services]) -> Response[Health]:
    body = await services.health()
    return Response(body, status_code=503 if body.status == "unavailable" else 200)


@get(telemetry.PATH, include_in_schema=False)
async def prometheus(services: NamedDependency[Services]) -> Response[bytes]:
    """Prometheus text exposition (docs/operations.md lists the metrics)."""
    telemetry.refresh(services.readings())
    return Response(telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)
