"""Ingest: a request's events are validated one by one, queued together as one ticket,
committed by a writer, and answered with what happened to each of them.

The HTTP handler only reads the body; protocols other than the native one (Segment,
PostHog) produce the same `Parsed` rows and go through `submit` too.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from event_metrics import access_log, posthog, posthog_batch, sdk, segment, segment_batch, telemetry
from event_metrics.auth import InvalidCredentials, KeyStore, WrongScope
from event_metrics.events import InvalidEvent, parse_events
from event_metrics.payload import TooManyEvents
from event_metrics.queue import IngestQueue
from event_metrics.schema import Row
from event_metrics.settings import IngestSettings
from event_metrics.writer import StorageUnavailable

# Events parsed between two turns of the event loop: about 5 ms of work. A batch of 9,000
# parsed in one piece held every other request for 100 ms (docs/benchmarks.md, "Hostile
# gzip bodies"). Each slice is checked as a batch of its own, with the same outcome.
PARSE_SLICE_EVENTS = 500

Status = Literal["accepted", "duplicate", "rejected", "queued"]
Protocol = Literal["native", "segment", "posthog"]


class EventResult(msgspec.Struct, omit_defaults=True):
    index: int
    status: Status
    # Only for "rejected": why.
    error: (
        Annotated[str, msgspec.Meta(examples=["user_id: Expected `str` of length >= 1"])] | None
    ) = None


class IngestResponse(msgspec.Struct, omit_defaults=True):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]
    # Only with ?wait=false: events queued but not yet committed.
    queued: int | None = None


@dataclass
class Parsed:
    """A request's events: the rows to store, where each came from, and the rejections."""

    project_id: int
    count: int
    protocol: Protocol = "native"
    rows: list[Row] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    rejected: list[EventResult] = field(default_factory=list)
    # Rows of other projects than project_id, by project (SDK messages with keys of their
    # own), for the rate limit.
    elsewhere: Counter[int] = field(default_factory=Counter)

    def add(self, index: int, row: Row) -> None:
        self.rows.append(row)
        self.positions.append(index)

    def reject(self, index: int, error: InvalidEvent) -> None:
        self.rejected.append(EventResult(index=index, status="rejected", error=str(error)))
        telemetry.REJECTED.labels(self.protocol, error.reason).inc()


class RateLimited(Exception):
    """The project sent more events than its rate limit allows; nothing was stored."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"over the project's rate limit of events per second; retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class RateLimiter:
    """Events per second per project, in this process: a token bucket that may go into
    debt, so a request larger than a second's worth still passes when the bucket is full,
    and the requests after it wait until the debt is paid."""

    def __init__(self, events_per_s: float) -> None:
        self.rate = events_per_s
        self._buckets: dict[int, tuple[float, float]] = {}  # project -> (tokens, at)

    def admit(self, project_id: int, events: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(project_id, (self.rate, now))
        tokens = min(self.rate, tokens + (now - at) * self.rate)
        if tokens <= 0:
            self._buckets[project_id] = (tokens, now)
            raise RateLimited(max(1, math.ceil(-tokens / self.rate)))
        self._buckets[project_id] = (tokens - events, now)


class Ingestor:
    """Validates, queues and answers; one per process, shared by every protocol."""

    def __init__(
        self, settings: IngestSettings, queue: IngestQueue, *, rate_limit_events_per_s: float
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.limiter = RateLimiter(rate_limit_events_per_s)
        # Events refused one by one, by protocol: SDKs get a 200 for a partly bad batch
        # and do not show its rejections to anyone, so this is where they are seen.
        self.rejected: Counter[str] = Counter(native=0, segment=0, posthog=0)
        self._max_future = timedelta(seconds=settings.max_future_s)

    async def parse_native(self, items: list[bytes], project_id: int) -> Parsed:
        """Our own event format, one raw JSON object per item, for one project."""
        settings = self.settings
        received_at = datetime.now(UTC)
        parsed = Parsed(project_id, count=len(items))
        for start in range(0, len(items), PARSE_SLICE_EVENTS):
            if start:
                await asyncio.sleep(0)  # the other requests' turn (PARSE_SLICE_EVENTS)
            outcomes = parse_events(
                items[start : start + PARSE_SLICE_EVENTS],
                project_id=project_id,
                received_at=received_at,
                max_event_bytes=settings.max_event_bytes,
                max_future=self._max_future,
                max_depth=settings.max_property_depth,
                max_digits=settings.max_number_digits,
            )
            for index, outcome in enumerate(outcomes, start):
                if isinstance(outcome, InvalidEvent):
                    parsed.reject(index, outcome)
                else:
                    parsed.add(index, outcome)
        if parsed.rejected:
            self.rejected["native"] += len(parsed.rejected)
        return parsed

    async def ingest_sdk(
        self,
        protocol: Protocol,
        text: bytes,
        *,
        path: str,
        query: dict[str, str],
        header_key: str | None,
        keys: KeyStore,
    ) -> dict[str, Any]:
        """A Segment or PostHog body: find its key, map each message, store the valid
        ones. The answer is for a 200 whatever was rejected: SDKs retry anything else,
        and a retry would not make a bad message good."""
        settings = self.settings
        size, depth = settings.max_event_bytes, settings.max_property_depth
        digits = settings.max_number_digits
        received_at = datetime.now(UTC)
        if protocol == "segment":
            segment_request = segment.parse(text, path)
            segment_request.decoded = sdk.checked_body(
                text, max_depth=depth + 1 + segment_request.nesting, max_digits=digits
            )
            items, body_key = segment_request.messages, segment_request.key
            rows_of = functools.partial(segment_batch.rows, segment_request)
            answer = segment.answer
        else:
            posthog_request = posthog.parse(text, query)
            posthog_request.decoded = sdk.checked_body(
                text, max_depth=depth + 1 + posthog_request.nesting, max_digits=digits
            )
            items = posthog_request.events
            body_key = posthog_request.key or posthog.key_in_events(posthog_request)
            rows_of = functools.partial(posthog_batch.rows, posthog_request)
            answer = posthog.answer
        secret = header_key or body_key
        project_id = keys.authorize_checked(secret, "write") or await keys.authorize(
            secret, "write"
        )
        access_log.note_project(project_id)
        if len(items) > settings.max_events_per_request:
            raise TooManyEvents(
                f"{len(items)} events in one request; the limit is "
                f"{settings.max_events_per_request}"
            )
        parsed = Parsed(project_id, count=len(items), protocol=protocol)
        # Each message goes to the project of its own key when it carries one (posthog-js
        # puts the token on every event; Segment's browser SDKs the writeKey): keys seen
        # in this request, with their project or why they are refused.
        known: dict[str, int | InvalidEvent] = {secret: project_id} if secret else {}
        destination = sdk.Destination(project_id, secret, received_at, self._max_future)
        mapped: Iterator[Row | sdk.Message | InvalidEvent] = rows_of(
            destination, max_event_bytes=size, max_depth=depth, max_digits=digits
        )
        # A row, or a message whose own key's project comes first (or whose row
        # to_row_from makes), or why a message is refused.
        for index, outcome in enumerate(mapped):
            if index and not index % PARSE_SLICE_EVENTS:
                await asyncio.sleep(0)  # the other requests' turn
            project = project_id
            try:
                if isinstance(outcome, InvalidEvent):
                    raise outcome
                if isinstance(outcome, sdk.Message):
                    if outcome.project_key is not None and outcome.project_key != secret:
                        project = await self._project_of(outcome, keys, known)
                    outcome = sdk.to_row_from(
                        outcome, project_id=project, received_at=received_at,
                        max_future=self._max_future,
                    )  # fmt: skip
            except InvalidEvent as exc:
                parsed.reject(index, exc)
            else:
                parsed.add(index, outcome)
                if project != project_id:
                    parsed.elsewhere[project] += 1
        self.rejected[protocol] += len(parsed.rejected)
        body, _ = await self.submit(parsed, wait=True)
        rejected = [{"index": r.index, "error": r.error} for r in parsed.rejected]
        return answer(body.accepted, body.duplicates, rejected)

    @staticmethod
    async def _project_of(
        message: sdk.Message, keys: KeyStore, known: dict[str, int | InvalidEvent]
    ) -> int:
        """The project of a message's own key, or InvalidEvent naming where the key was."""
        key = message.project_key
        assert key is not None
        project = known.get(key)
        if project is None:
            try:
                project = keys.authorize_checked(key, "write") or await keys.authorize(key, "write")
            except (InvalidCredentials, WrongScope) as exc:
                field = message.names.get("project_key", "key")
                project = InvalidEvent(f"{field} is not an active write key: {exc}", "bad_key")
            known[key] = project
        if isinstance(project, InvalidEvent):
            raise project
        return project

    async def submit(self, parsed: Parsed, *, wait: bool) -> tuple[IngestResponse, int]:
        """Queue the valid rows as one ticket (all or nothing) and, unless wait is False,
        wait for their commit; return the answer and its status code."""
        # RateLimited: nothing stored. SDK messages may belong to other projects too.
        elsewhere = parsed.elsewhere
        self.limiter.admit(parsed.project_id, parsed.count - sum(elsewhere.values()))
        for project, events in elsewhere.items():
            self.limiter.admit(project, events)
        outcome: list[bool] | None = []
        if parsed.rows:
            # QueueFull / QueueClosed: nothing queued
            ticket = self.queue.put(parsed.rows, parsed.protocol)
            if not wait:
                outcome = None
            else:
                try:
                    outcome = await ticket.outcome(self.settings.ack_timeout_s)
                except TimeoutError:
                    raise StorageUnavailable(
                        "the events were not committed in time; retrying with the same "
                        "idempotency keys is safe"
                    ) from None
        body = self._answer(parsed, outcome)
        access_log.note_events(body.accepted, body.duplicates, body.rejected, body.queued)
        if parsed.rejected:
            return body, 400
        return body, 202 if outcome is None else 200

    def _answer(self, parsed: Parsed, outcome: list[bool] | None) -> IngestResponse:
        # Small requests list every event; large ones only those not accepted (docs/api.md).
        list_all = parsed.count <= self.settings.results_full_max
        results = list(parsed.rejected)
        accepted = duplicates = 0
        if outcome is None:
            if list_all:
                results.extend(EventResult(index=i, status="queued") for i in parsed.positions)
        else:
            for index, fresh in zip(parsed.positions, outcome, strict=True):
                if fresh:
                    accepted += 1
                    if list_all:
                        results.append(EventResult(index=index, status="accepted"))
                else:
                    duplicates += 1
                    results.append(EventResult(index=index, status="duplicate"))
        if parsed.rejected:
            results.sort(key=lambda r: r.index)
        return IngestResponse(
            accepted=accepted,
            duplicates=duplicates,
            rejected=len(parsed.rejected),
            results=results,
            queued=len(parsed.positions) if outcome is None else None,
        )
