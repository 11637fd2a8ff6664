"""Ingest: a request's events are validated one by one, queued together as one ticket,
committed by a writer, and answered with what happened to each of them.

The HTTP handler only reads the body; protocols other than the native one (Segment,
PostHog) produce the same `Parsed` rows and go through `submit` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from event_metrics.events import InvalidEvent, parse_event
from event_metrics.queue import IngestQueue
from event_metrics.schema import Row
from event_metrics.settings import IngestSettings
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


@dataclass
class Parsed:
    """A request's events: the rows to store, where each came from, and the rejections."""

    count: int
    rows: list[Row] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    rejected: list[EventResult] = field(default_factory=list)

    def add(self, index: int, row: Row) -> None:
        self.rows.append(row)
        self.positions.append(index)

    def reject(self, index: int, reason: str) -> None:
        self.rejected.append(EventResult(index=index, status="rejected", error=reason))


class Ingestor:
    """Validates, queues and answers; one per process, shared by every protocol."""

    def __init__(self, settings: IngestSettings, queue: IngestQueue) -> None:
        self.settings = settings
        self.queue = queue
        self._max_future = timedelta(seconds=settings.max_future_s)

    def parse_native(self, items: list[bytes]) -> Parsed:
        """Our own event format, one raw JSON object per item."""
        settings = self.settings
        received_at = datetime.now(UTC)
        parsed = Parsed(count=len(items))
        for index, raw in enumerate(items):
            try:
                row = parse_event(
                    raw,
                    received_at=received_at,
                    max_event_bytes=settings.max_event_bytes,
                    max_future=self._max_future,
                    max_depth=settings.max_property_depth,
                )
            except InvalidEvent as exc:
                parsed.reject(index, str(exc))
            else:
                parsed.add(index, row)
        return parsed

    async def submit(self, parsed: Parsed, *, wait: bool) -> tuple[IngestResponse, int]:
        """Queue the valid rows as one ticket (all or nothing) and, unless wait is False,
        wait for their commit; return the answer and its status code."""
        outcome: list[bool] | None = []
        if parsed.rows:
            ticket = self.queue.put(parsed.rows)  # QueueFull / QueueClosed: nothing queued
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
