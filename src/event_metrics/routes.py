"""HTTP handlers: POST /events, GET /metrics, GET /health."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, QueryParameter

from event_metrics import metrics_service
from event_metrics.backoff import describe
from event_metrics.errors import ErrorBody
from event_metrics.events import InvalidEvent, Row, parse_event
from event_metrics.metrics import MetricsResponse, parse_query
from event_metrics.openapi import IngestOperation
from event_metrics.payload import body_headers, media_type, read_request_body, split_events
from event_metrics.services import Services
from event_metrics.writer import StorageUnavailable

Status = Literal["accepted", "duplicate", "rejected", "queued"]


class EventResult(msgspec.Struct, omit_defaults=True):
    index: int
    status: Status
    error: str | None = None


class IngestResponse(msgspec.Struct, omit_defaults=True):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]
    # Only with ?wait=false: events queued but not yet committed.
    queued: int | None = None


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "degraded", "unavailable"]
    postgres: str
    queue_depth: int
    queue_capacity: int
    oldest_queued_age_s: float
    rows_written: int
    writers: dict[str, Any]
    replication: dict[str, Any] | None = None
    rollups: dict[str, Any] | None = None


def _services(state: State) -> Services:
    services: Services = state.services
    return services


@post(
    "/events",
    summary="Ingest one event or a batch",
    description=(
        'Body: an event, a JSON array of events, {"events": [...]}, or NDJSON. Answered '
        "after the events are committed (200, or 400 if any event was rejected); "
        "?wait=false answers 202 once the events are queued."
    ),
    status_code=200,
    request_max_body_size=None,  # read_body enforces the limit, before and after gunzip
    operation_class=IngestOperation,
    responses={
        202: ResponseSpec(IngestResponse, description="?wait=false: queued, not yet committed"),
        400: ResponseSpec(
            IngestResponse, description="some events rejected (the others are stored)"
        ),
        408: ResponseSpec(ErrorBody, description="the body did not arrive in time"),
        413: ResponseSpec(ErrorBody, description="body or batch over the limits"),
        415: ResponseSpec(ErrorBody, description="unsupported Content-Type or -Encoding"),
        503: ResponseSpec(ErrorBody, description="queue full or commit not confirmed in time"),
    },
)
async def ingest(
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
    services: Services = request.app.state.services
    settings = services.settings
    headers = body_headers(request.scope["headers"])
    kind = media_type(headers.content_type)
    body = await read_request_body(request.receive, headers, max_bytes=settings.max_body_bytes)
    items = split_events(body, kind=kind, max_events=settings.max_batch_events)

    received_at = datetime.now(UTC)
    max_future = timedelta(seconds=settings.max_future_seconds)
    rows: list[Row] = []
    positions: list[int] = []
    rejected: list[EventResult] = []
    for index, raw in enumerate(items):
        try:
            rows.append(
                parse_event(
                    raw,
                    received_at=received_at,
                    max_event_bytes=settings.max_event_bytes,
                    max_future=max_future,
                    max_depth=settings.max_property_depth,
                )
            )
            positions.append(index)
        except InvalidEvent as exc:
            rejected.append(EventResult(index=index, status="rejected", error=str(exc)))

    outcome: list[bool] = []
    if rows:
        ticket = services.queue.put(rows)
        if not wait:
            return _ingest_response(
                items, positions, rejected, None, settings.results_full_max, status_code=202
            )
        try:
            outcome = await ticket.outcome(settings.ack_timeout_ms / 1000)
        except TimeoutError:
            raise StorageUnavailable(
                "the events were not committed in time; retrying with the same "
                "idempotency keys is safe"
            ) from None
    return _ingest_response(
        items, positions, rejected, outcome, settings.results_full_max, status_code=200
    )


def _ingest_response(
    items: list[bytes],
    positions: list[int],
    rejected: list[EventResult],
    outcome: list[bool] | None,
    full_max: int,
    *,
    status_code: int,
) -> Response[IngestResponse]:
    # Small requests list every event; large ones only those not accepted (docs/api.md).
    list_all = len(items) <= full_max
    results = list(rejected)
    accepted = duplicates = 0
    if outcome is None:
        if list_all:
            results.extend(EventResult(index=i, status="queued") for i in positions)
    else:
        for index, fresh in zip(positions, outcome, strict=True):
            if fresh:
                accepted += 1
                if list_all:
                    results.append(EventResult(index=index, status="accepted"))
            else:
                duplicates += 1
                results.append(EventResult(index=index, status="duplicate"))
    results.sort(key=lambda r: r.index)
    body = IngestResponse(
        accepted=accepted,
        duplicates=duplicates,
        rejected=len(rejected),
        results=results,
        queued=len(positions) if outcome is None else None,
    )
    return Response(body, status_code=400 if rejected else status_code)


@get(
    "/metrics",
    summary="Total events and exact unique users, bucketed and grouped",
    responses={
        400: ResponseSpec(ErrorBody, description="invalid parameter (named in the body)"),
        503: ResponseSpec(ErrorBody, description="the chosen engine is unreachable"),
    },
)
async def metrics(
    state: State,
    start: Annotated[
        str | None,
        QueryParameter(
            name="from",
            description="window start (inclusive), RFC 3339, whole seconds",
            required=True,
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            name="to", description="window end (exclusive), RFC 3339, whole seconds", required=True
        ),
    ] = None,
    event_name: Annotated[
        str | None, Parameter(description="only this event; absent means all events")
    ] = None,
    granularity: Annotated[
        str | None, Parameter(description="hour, day, week, month or total (default)")
    ] = None,
    group_by: Annotated[
        str | None, Parameter(description="channel, event_name, or both comma-separated")
    ] = None,
    timezone: Annotated[
        str | None, Parameter(description="IANA time zone for buckets (default UTC)")
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
    services = _services(state)
    settings = services.settings
    query = parse_query(
        start=start,
        end=end,
        event_name=event_name,
        granularity=granularity,
        group_by=group_by,
        timezone=timezone,
        max_window_days=settings.max_window_days,
    )
    async with services.metrics_gate.turn():
        answer, used = await metrics_service.answer(
            query,
            settings=settings,
            backend=backend or settings.backend,
            plan=plan or "auto",
            query_pool=services.query_pool,
            clickhouse=services.clickhouse,
        )
    return Response(answer, headers={"X-Metrics-Plan": used})


@get("/health", summary="Liveness of PostgreSQL, the writers, replication and rollups")
async def health(state: State) -> Response[Health]:
    services = _services(state)
    started = time.monotonic()
    try:
        async with asyncio.timeout(2):
            async with services.query_pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
        postgres = f"ok ({(time.monotonic() - started) * 1000:.1f} ms)"
    except Exception as exc:  # any failure to answer means unavailable
        postgres = f"unavailable: {describe(exc)}"
    writers = services.writers.status()
    replication = services.replicator.status() if services.replicator else None
    rollups = services.refresher.status() if services.refresher else None
    # Unavailable (503) when events cannot be acknowledged; degraded (200) when only a
    # follower of the events table is failing.
    if not postgres.startswith("ok") or writers["state"] != "running":
        status: Literal["ok", "degraded", "unavailable"] = "unavailable"
    elif any(part and part["state"] == "failing" for part in (replication, rollups)):
        status = "degraded"
    else:
        status = "ok"
    body = Health(
        status=status,
        postgres=postgres,
        queue_depth=services.queue.depth,
        queue_capacity=services.queue.max_events,
        oldest_queued_age_s=round(services.queue.oldest_age_s(), 3),
        rows_written=services.writers.rows_written,
        writers=writers,
        replication=replication,
        rollups=rollups,
    )
    return Response(body, status_code=503 if status == "unavailable" else 200)
