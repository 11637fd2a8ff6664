"""GET /events/names: the event names a project sent in a window, with their counts.

It is /metrics grouped by event_name over the whole window, so it goes through the same
admission gate, engine choice (`backend`), rollups and freshness as /metrics, and the
two can never disagree about a count. The dashboard fills its event picker from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Parameter, QueryParameter

from event_metrics.auth import secret_from_headers
from event_metrics.errors import ErrorBody
from event_metrics.freshness import Freshness
from event_metrics.metrics import Rfc3339, parse_query
from event_metrics.openapi import READ_KEY
from event_metrics.openapi_examples import Verbatim
from event_metrics.services import Services

PATH = "/events/names"


class EventNameCount(msgspec.Struct):
    event_name: Annotated[str, msgspec.Meta(examples=["product_view"])]
    events: int
    unique_users: int


class EventNamesResponse(msgspec.Struct, kw_only=True):
    from_: Rfc3339 = msgspec.field(name="from")
    to: Rfc3339
    backend: str
    # Most events first, then by name.
    names: list[EventNameCount]
    freshness: Freshness


def _error(code: str, detail: str, **extra: str) -> Verbatim:
    return Verbatim(id=code, summary=code, value={"error": code, "detail": detail, **extra})


def _answer(container: object, description: str, *examples: Example) -> ResponseSpec:
    return ResponseSpec(
        container, generate_examples=False, description=description, examples=list(examples)
    )


# fmt: off
RESPONSES = {
    200: _answer(EventNamesResponse, "the names, most events first",
        Verbatim(id="names", summary="the event names of a day", value={
            "from": "2026-11-01T00:00:00+00:00", "to": "2026-11-02T00:00:00+00:00",
            "backend": "postgres", "names": [
                {"event_name": "page_view", "events": 1204, "unique_users": 311},
                {"event_name": "product_view", "events": 3, "unique_users": 3}],
            "freshness": {"source": "rollup", "lag_rows": 0, "lag_rows_capped": False,
                "lag_seconds": 0.0, "state": "running",
                "as_of": "2026-11-01T09:20:41.516+00:00", "age_s": 0.0,
                "rollup_lag_rows": 0}})),
    400: _answer(ErrorBody, "a parameter is missing or wrong (named in the body)",
        _error("invalid_parameter", "to must be after from", parameter="to")),
    401: _answer(ErrorBody, "no key, or an unknown or revoked one", _error(
        "missing_credentials", "this route needs a read key: Authorization: Bearer <key>")),
    403: _answer(ErrorBody, "a write key", _error(
        "wrong_scope", "this is a write key; this route needs a read key")),
    503: _answer(ErrorBody, "the engine is unreachable or too slow, or too many answers are "
        "being computed: retry (see Retry-After)",
        _error("backend_unavailable", "PostgreSQL did not answer: TimeoutError"),
        _error("metrics_busy", "too many /metrics requests at once; retry shortly")),
}
# fmt: on


@get(
    PATH,
    security=READ_KEY,
    summary="The event names sent in a window, with their counts",
    description=(
        "GET /metrics grouped by event_name over the whole window, as a list: the same "
        "counts, engines and freshness."
    ),
    responses=RESPONSES,
)
async def event_names(
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
    backend: Annotated[
        Literal["postgres", "clickhouse"] | None,
        Parameter(description="engine that answers; default EVENT_METRICS_BACKEND"),
    ] = None,
) -> Response[EventNamesResponse]:
    secret = secret_from_headers(request.scope["headers"])
    keys = services.keys
    project_id = keys.authorize_checked(secret, "read") or await keys.authorize(secret, "read")
    metrics_service = services.metrics
    query = parse_query(
        project_id=project_id,
        start=start,
        end=end,
        event_name=None,
        granularity="total",
        group_by="event_name",
        timezone=None,
        max_window_days=metrics_service.settings.metrics.max_window_days,
    )
    answer, used = await metrics_service.answer(query, backend=backend, plan=None)
    names = [
        EventNameCount(row["event_name"], row["events"], row["unique_users"])
        for row in answer.series
    ]
    names.sort(key=lambda name: (-name.events, name.event_name))
    body = EventNamesResponse(
        from_=answer.from_, to=answer.to, backend=answer.backend, names=names,
        freshness=answer.freshness,
    )  # fmt: skip
    return Response(body, headers={"X-Metrics-Plan": used})
