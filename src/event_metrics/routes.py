"""HTTP handlers: the Segment and PostHog SDK routes, GET /metrics, GET /health and
GET /internal/metrics (telemetry). POST /events is the fast path, in http_fast.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Parameter, QueryParameter

from event_metrics import access_log, http_fast, posthog, sdk, segment, telemetry
from event_metrics.auth import secret_from_headers
from event_metrics.errors import SDK_ERROR_FIELDS
from event_metrics.ingest import Protocol
from event_metrics.metrics import MetricsResponse, parse_query
from event_metrics.openapi import READ_KEY, WRITE_KEY, PostHogOperation, SegmentOperation
from event_metrics.openapi_examples import (
    HEALTH_RESPONSES,
    METRICS_RESPONSES,
    POSTHOG_RESPONSES,
    SEGMENT_RESPONSES,
)
from event_metrics.payload import body_headers, read_request_body
from event_metrics.services import Health, Services

# Routes that take events (CORS: any origin by default) and that read metrics.
SDK_PATHS = (*segment.PATHS, *posthog.PATHS)
INGEST_PATHS = (http_fast.PATH, *SDK_PATHS)
READ_PATHS = ("/metrics", "/export")


async def _sdk_ingest(
    protocol: Protocol, request: Request[Any, Any, Any], services: Services
) -> Response[dict[str, Any]]:
    ingestor = services.ingestor
    keys = services.keys
    header_key = secret_from_headers(request.scope["headers"])
    if header_key is not None:
        # A key in a header is checked before the body is read or unpacked: a bad one
        # gets its 401 or 403 for nothing. (A key in the body is checked once it is read.)
        keys.authorize_checked(header_key, "write") or await keys.authorize(header_key, "write")
    headers = body_headers(request.scope["headers"])
    max_bytes = ingestor.settings.max_body_bytes
    body = await read_request_body(request.receive, headers, max_bytes=max_bytes)
    text = await sdk.json_body(body, content_type=headers.content_type, max_bytes=max_bytes)
    answer = await ingestor.ingest_sdk(
        protocol,
        text,
        path=request.scope["path"],
        query=dict(request.query_params),
        header_key=header_key,
        keys=keys,
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
    opt={SDK_ERROR_FIELDS: True},
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
    opt={SDK_ERROR_FIELDS: True},
)
async def posthog_ingest(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[dict[str, Any]]:
    return await _sdk_ingest("posthog", request, services)


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
    access_log.note_project(project_id)
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
async def telemetry_exposition(services: NamedDependency[Services]) -> Response[bytes]:
    """Prometheus text exposition (docs/operations.md lists the metrics)."""
    telemetry.refresh(services.readings())
    return Response(telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)
