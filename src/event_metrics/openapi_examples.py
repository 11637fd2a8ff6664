"""Examples for the OpenAPI document: requests the service takes and, for every route and
status, an answer that is true of the service (docs/api.md shows the same ones)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, Reference

from event_metrics.errors import ErrorBody
from event_metrics.export import ExportedEvent
from event_metrics.ingest import IngestResponse
from event_metrics.metrics import MetricsResponse
from event_metrics.services import Health

# --- what the SDK routes answer (segment.answer, posthog.answer) ----------------------------


class Rejection(msgspec.Struct):
    index: int
    error: str


class SegmentAnswer(msgspec.Struct):
    """The 200 of the Segment routes: the SDKs read `success`, the rest is for people."""

    success: bool
    accepted: int
    duplicates: int
    rejected: list[Rejection]


class PostHogAnswer(msgspec.Struct):
    """The 200 of the PostHog routes: the SDKs read `status`, the rest is for people."""

    status: int
    accepted: int
    duplicates: int
    rejected: list[Rejection]


# --- examples: requests the service takes, and what it answers -----------------------------


@dataclass
class Verbatim(Example):
    """An example written into the document as given: Litestar would drop its null values
    (`"last_error": null`) and write its `id` (its key) into it, where OpenAPI allows none."""

    def to_schema(self) -> dict[str, Any]:
        fields = {"summary": self.summary, "description": self.description, "value": self.value}
        return {key: value for key, value in fields.items() if value is not None}


Examples = dict[str, Example | Reference]


def _answer(container: Any, description: str, *examples: Example) -> ResponseSpec:
    # Left to generate examples, Litestar fills the schema with random strings.
    return ResponseSpec(
        container, generate_examples=False, description=description, examples=list(examples)
    )


def _lines(container: Any, description: str, *examples: Example) -> ResponseSpec:
    """An NDJSON answer: `container` and the examples describe one line."""
    return ResponseSpec(
        container, generate_examples=False, description=description, examples=list(examples),
        media_type="application/x-ndjson",
    )  # fmt: skip


def _error(code: str, detail: str, *, sdk: bool = False, **extra: str) -> Verbatim:
    """An error body with this code, as the service sends it (ErrorBody)."""
    value = {"error": code, "detail": detail, **extra}
    if sdk:  # the SDK routes repeat both under the names RudderStack's SDKs read
        value |= {"code": code, "message": detail}
    return Verbatim(id=code, summary=code, value=value)


# fmt: off
VIEWS = [
    {"event_name": "product_view", "user_id": "u-2", "channel": "ios",
     "timestamp": "2026-11-01T09:15:00Z", "properties": {"sku": "A-1042", "price": 19.9}},
    {"event_name": "product_view", "user_id": "u-3", "channel": "web",
     "timestamp": "2026-11-01T10:15:02.250+01:00", "sent_at": "2026-11-01T10:15:03+01:00",
     "idempotency_key": "web-view-7f3a9c"},
]
EVENTS_EXAMPLES: Examples = {
    "event": Verbatim(summary="one event", value={
        "event_name": "signup", "user_id": "u-1", "channel": "web", "properties": {"plan": "pro"}}),
    "batch": Verbatim(summary="a batch: a JSON array of events", value=VIEWS),
    "wrapped": Verbatim(summary='a batch as {"events": [...]}', value={"events": VIEWS}),
}
SEGMENT_EXAMPLES: Examples = {
    "batch": Verbatim(summary="/v1/batch, as analytics-python sends it", value={"batch": [
        {"type": "track", "event": "Signed Up", "userId": "u1", "properties": {"plan": "pro"},
         "messageId": "8c3b6c1e-2f0a-4c59-9a5e-6d1f0b7e4a21", "timestamp": "2026-11-29T10:00:00Z",
         "context": {"library": {"name": "analytics-python", "version": "2.3.4"}}}],
        "sentAt": "2026-11-29T10:00:01Z"}),
    "track": Verbatim(summary="/v1/track: one message, its type given by the path", value={
        "event": "Signed Up", "userId": "u1", "properties": {"plan": "pro"},
        "messageId": "5e2f8a90-6b1c-4d3e-a7f4-2b9c0d1e3f52", "timestamp": "2026-11-29T10:00:00Z"}),
}
POSTHOG_EXAMPLES: Examples = {
    "batch": Verbatim(summary="/batch, as posthog-python sends it", value={
        "api_key": "emw_...", "sent_at": "2026-11-29T10:00:01+00:00", "batch": [
            {"event": "$pageview", "distinct_id": "u1", "timestamp": "2026-11-29T10:00:00+00:00",
             "uuid": "0193a1f2-5b6c-7d8e-9f00-a1b2c3d4e5f6",
             "properties": {"$lib": "posthog-python", "$current_url": "https://example.com/"}}]}),
    "capture": Verbatim(summary="/capture: one event with its api_key", value={
        "api_key": "emw_...", "event": "Signed Up", "distinct_id": "u1",
        "properties": {"plan": "pro"}, "timestamp": "2026-11-29T10:00:00Z"}),
}


def _write_errors(*, sdk: bool) -> dict[int, ResponseSpec]:
    """The error statuses of the routes that take events, but 400 (which differs)."""
    return {
        401: _answer(ErrorBody, "no key, or an unknown or revoked one", _error(
            "missing_credentials", "this route needs a write key: Authorization: Bearer <key>",
            sdk=sdk)),
        403: _answer(ErrorBody, "a read key", _error(
            "wrong_scope", "this is a read key; this route needs a write key", sdk=sdk)),
        413: _answer(ErrorBody, "body or batch over the limits; nothing stored",
            _error("body_too_large", "body is over 5242880 bytes", sdk=sdk),
            _error("too_many_events", "10001 events in one request; the limit is 10000", sdk=sdk)),
        415: _answer(ErrorBody, "a Content-Type or Content-Encoding not read; nothing stored",
            _error("unsupported_media_type", "Content-Encoding 'br' is not supported; use gzip",
                   sdk=sdk)),
        429: _answer(ErrorBody, "over the project's rate limit (see Retry-After); nothing stored",
            _error("rate_limited",
                   "over the project's rate limit of events per second; retry in 1 s", sdk=sdk)),
        503: _answer(ErrorBody, "queue full, shutting down, or commit not confirmed in time: "
            "retry with the same events (see Retry-After)",
            _error("overloaded", "ingest queue is full (199990 events waiting)", sdk=sdk),
            _error("storage_unavailable", "the events were not committed in time; retrying with "
                   "the same idempotency keys is safe", sdk=sdk)),
    }


INGEST_RESPONSES = {
    200: _answer(IngestResponse, "no event rejected; every event is committed", Verbatim(
        id="committed", summary="two events stored", value={
            "accepted": 2, "duplicates": 0, "rejected": 0,
            "results": [{"index": 0, "status": "accepted"}, {"index": 1, "status": "accepted"}]})),
    202: _answer(IngestResponse, "?wait=false and no event rejected: queued, not yet committed",
        Verbatim(id="queued", summary="queued", value={"accepted": 0, "duplicates": 0,
            "rejected": 0, "results": [{"index": 0, "status": "queued"}], "queued": 1})),
    400: _answer(IngestResponse | ErrorBody, "some events rejected (the others are stored), or "
        "the body as a whole is unusable (nothing stored)", Verbatim(
            id="some_rejected", summary="one event rejected, the others stored", value={
                "accepted": 2, "duplicates": 1, "rejected": 1, "results": [
                    {"index": 0, "status": "accepted"}, {"index": 1, "status": "duplicate"},
                    {"index": 2, "status": "rejected",
                     "error": "user_id: Expected `str` of length >= 1"},
                    {"index": 3, "status": "accepted"}]}),
        _error("malformed_body",
               "body is not valid JSON: JSON is malformed: object keys must be strings (byte 1)")),
    **_write_errors(sdk=False),
}
SEGMENT_RESPONSES = {
    200: _answer(SegmentAnswer, "the valid messages are committed; refused ones are listed",
        Verbatim(id="one_refused", summary="a message refused, the other stored", value={
            "success": True, "accepted": 1, "duplicates": 0,
            "rejected": [{"index": 1, "error": "a track message needs an event name"}]})),
    400: _answer(ErrorBody, "the body as a whole is not what the SDK sends; nothing stored",
        _error("malformed_body", 'a batch body is {"batch": [messages], ...}', sdk=True)),
    **_write_errors(sdk=True),
}
POSTHOG_RESPONSES = {
    200: _answer(PostHogAnswer, "the valid events are committed; refused ones are listed",
        Verbatim(id="stored", summary="one event stored", value={
            "status": 1, "accepted": 1, "duplicates": 0, "rejected": []})),
    400: _answer(ErrorBody, "the body as a whole is not what the SDK sends; nothing stored",
        _error("malformed_body", '"batch" must be a list of events', sdk=True)),
    **_write_errors(sdk=True),
}
METRICS_RESPONSES = {
    200: _answer(MetricsResponse, "the counts; X-Metrics-Plan says how they were computed",
        Verbatim(id="hourly_per_channel", summary="hourly product views per channel, in Berlin",
            value={"from": "2026-11-01T01:00:00+01:00", "to": "2026-11-02T01:00:00+01:00",
                "event_name": "product_view", "granularity": "hour", "group_by": ["channel"],
                "timezone": "Europe/Berlin", "backend": "postgres",
                "total": {"events": 3, "unique_users": 3}, "series": [
                    {"bucket_start": "2026-11-01T10:00:00+01:00", "channel": "ios",
                     "events": 1, "unique_users": 1},
                    {"bucket_start": "2026-11-01T10:00:00+01:00", "channel": "web",
                     "events": 2, "unique_users": 2}],
                "freshness": {"source": "rollup", "lag_rows": 0, "lag_rows_capped": False,
                    "lag_seconds": 0.0, "state": "running",
                    "as_of": "2026-11-01T09:20:41.516+00:00", "age_s": 0.0,
                    "rollup_lag_rows": 3}}),
        Verbatim(id="from_a_mirror_catching_up", summary="daily totals from ClickHouse while "
            "the replicator catches up: the mirror lacked 1.17M events 0.6 s before", value={
                "from": "2026-10-25T00:00:00+00:00", "to": "2026-11-01T00:00:00+00:00",
                "event_name": None, "granularity": "day", "group_by": [], "timezone": "UTC",
                "backend": "clickhouse", "total": {"events": 412031, "unique_users": 48211},
                "series": [{"bucket_start": "2026-10-25T00:00:00+00:00", "events": 412031,
                            "unique_users": 48211}],
                "freshness": {"source": "clickhouse", "lag_rows": 1170000,
                    "lag_rows_capped": True, "lag_seconds": 41.2, "state": "catching_up",
                    "as_of": "2026-11-01T09:15:03.120+00:00", "age_s": 0.6,
                    "rollup_lag_rows": None}})),
    400: _answer(ErrorBody, "a parameter is missing or wrong (named in the body), or the "
        "answer would be too large",
        _error("invalid_parameter", "to must be after from", parameter="to"),
        _error("answer_too_large", "the answer has more than 50000 series rows "
               "(EVENT_METRICS_MAX_SERIES_ROWS): narrow the window, use a coarser granularity "
               "or group by fewer dimensions")),
    401: _answer(ErrorBody, "no key, or an unknown or revoked one", _error(
        "missing_credentials", "this route needs a read key: Authorization: Bearer <key>")),
    403: _answer(ErrorBody, "a write key", _error(
        "wrong_scope", "this is a write key; this route needs a read key")),
    503: _answer(ErrorBody, "the engine is unreachable or too slow, or too many answers are "
        "being computed: retry (see Retry-After)",
        _error("backend_unavailable", "PostgreSQL did not answer: TimeoutError"),
        _error("metrics_busy", "too many /metrics requests at once; retry shortly")),
}
_REFUSED = "OSError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
HEALTH_RESPONSES = {
    200: _answer(Health, "ok, or degraded: events are taken, but the replicator or the rollup "
        "refresher is failing (one that is catching up leaves it ok)",
        Verbatim(id="ok", summary="everything works", value={
            "status": "ok", "postgres": "ok (0.6 ms)", "queue_depth": 0,
            "queue_capacity": 200000, "oldest_queued_age_s": 0.0, "rows_written": 2,
            "writers": {"state": "running", "batches_in_flight": 0, "oldest_in_flight_s": 0.0,
                        "commits": 2, "last_error": None},
            "keys": {"state": "running", "age_s": 0.4, "last_error": None},
            "rejected_events": {"native": 0, "segment": 1, "posthog": 0},
            "replication": {"state": "running", "lag_rows": 0, "lag_rows_capped": False,
                            "lag_seconds": 0.0, "lag_age_s": 0.4, "rows_per_second": 3.0,
                            "eta_seconds": None, "last_error": None, "rows_copied": 1},
            "rollups": {"state": "running", "lag_rows": 0, "lag_rows_capped": False,
                        "lag_seconds": 0.0, "lag_age_s": 0.2, "rows_per_second": 0.0,
                        "eta_seconds": None, "last_error": None, "rows_folded": 2}}),
        Verbatim(id="catching_up", summary="ok while the mirror catches up after a restart",
            value={"status": "ok", "postgres": "ok (0.7 ms)", "queue_depth": 0,
            "queue_capacity": 200000, "oldest_queued_age_s": 0.0, "rows_written": 0,
            "writers": {"state": "running", "batches_in_flight": 0, "oldest_in_flight_s": 0.0,
                        "commits": 0, "last_error": None},
            "keys": {"state": "running", "age_s": 0.2, "last_error": None},
            "rejected_events": {"native": 0, "segment": 0, "posthog": 0},
            "replication": {"state": "catching_up", "lag_rows": 1170000,
                            "lag_rows_capped": True, "lag_seconds": 41.2, "lag_age_s": 0.7,
                            "rows_per_second": 118000.0, "eta_seconds": 9.9,
                            "last_error": None, "rows_copied": 830000},
            "rollups": {"state": "running", "lag_rows": 0, "lag_rows_capped": False,
                        "lag_seconds": 0.0, "lag_age_s": 0.3, "rows_per_second": 0.0,
                        "eta_seconds": None, "last_error": None, "rows_folded": 2000000}})),
    503: _answer(Health, "unavailable: events cannot be acknowledged", Verbatim(
        id="unavailable", summary="PostgreSQL is down (and no ClickHouse is configured)", value={
            "status": "unavailable", "postgres": "unavailable: TimeoutError", "queue_depth": 40,
            "queue_capacity": 200000, "oldest_queued_age_s": 3.2, "rows_written": 1200,
            "writers": {"state": "failing", "batches_in_flight": 1, "oldest_in_flight_s": 3.2,
                        "commits": 310, "last_error": _REFUSED},
            "keys": {"state": "failing", "age_s": 3.5, "last_error": _REFUSED},
            "rejected_events": {"native": 0, "segment": 0, "posthog": 0},
            "rollups": {"state": "failing", "lag_rows": 40, "lag_rows_capped": False,
                        "lag_seconds": 3.1, "lag_age_s": 3.2, "rows_per_second": 0.0,
                        "eta_seconds": None, "last_error": _REFUSED, "rows_folded": 1200}})),
}
# An exported line as clients read it: its properties (held as raw JSON text) are an object.
EXPORTED_LINE = msgspec.defstruct(
    "ExportedEvent",
    [
        (f.name, dict[str, Any] | None if f.name == "properties" else f.type, f.default)
        if not f.required else (f.name, f.type)
        for f in msgspec.structs.fields(ExportedEvent)
    ],
    omit_defaults=True,
)
EXPORT_RESPONSES = {
    200: _lines(EXPORTED_LINE, "the events, one JSON object per line, oldest first (gzip when "
        "Accept-Encoding allows); the example is one line",
        Verbatim(id="line", summary="one line: an event as POST /events takes it", value={
            "event_name": "product_view", "user_id": "u-2",
            "timestamp": "2026-11-01T09:15:00.25Z", "idempotency_key": "web-view-7f3a9c",
            "channel": "ios", "properties": {"price": 19.9, "sku": "A-1042"}})),
    400: _answer(ErrorBody, "a parameter is wrong (named in the body)",
        _error("invalid_parameter", "to must be after from", parameter="to")),
    401: _answer(ErrorBody, "no key, or an unknown or revoked one", _error(
        "missing_credentials", "this route needs a read key: Authorization: Bearer <key>")),
    403: _answer(ErrorBody, "a write key", _error(
        "wrong_scope", "this is a write key; this route needs a read key")),
    503: _answer(ErrorBody, "PostgreSQL is unreachable, or this process runs as many exports "
        "as it may: retry (see Retry-After)",
        _error("backend_unavailable", "PostgreSQL is unavailable: TimeoutError"),
        _error("export_busy",
               "2 exports are running in this process, the most it runs at once")),
}
# fmt: on
