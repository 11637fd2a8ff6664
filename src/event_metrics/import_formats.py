"""What each line of an import file becomes: the row POST /events (or the SDK endpoint of
its source) would store for it, or the reason it would be refused.

The checks and mappings are those of the HTTP endpoints, called here, not copied:
`events.parse_events` for our own format, `segment.message` and `posthog.message` then
`sdk.to_row_from` for the others. What differs is what a file cannot have:

- no receipt time of ours for the event, so no clock-skew correction: a time is taken as
  the file gives it. (An export's time is final: Segment's `timestamp` is already
  corrected by Segment, PostHog's is the event's time. The correction from `sentAt`
  needs the moment our server received the message, and an import is not that moment.)
- no key per message: every line goes to the project named on the command line, whatever
  `writeKey`, `api_key` or `token` it carries (those are never stored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal, get_args

import msgspec

from event_metrics import posthog, sdk, segment
from event_metrics.events import InvalidEvent, parse_events
from event_metrics.schema import Row
from event_metrics.settings import IngestSettings

Source = Literal["native", "segment", "rudderstack", "posthog"]
SOURCES: tuple[str, ...] = get_args(Source)
Outcome = Row | InvalidEvent


class LineDecoder:
    """Turns batches of lines of one source into rows for one project."""

    def __init__(self, source: Source, settings: IngestSettings, *, project_id: int) -> None:
        self.source = source
        self.settings = settings
        self.project_id = project_id
        self.max_future = timedelta(seconds=settings.max_future_s)
        self._decode: Callable[[Sequence[bytes], datetime], list[Outcome]] = {
            "native": self._native,
            "segment": self._segment,
            "rudderstack": self._segment,  # RudderStack speaks Segment's API
            "posthog": self._posthog,
        }[source]

    def decode(self, lines: Sequence[bytes], received_at: datetime) -> list[Outcome]:
        """Each line's row, or why it is refused; `received_at` is the rows' receipt time."""
        if not lines:
            return []
        return self._decode(lines, received_at)

    def _native(self, lines: Sequence[bytes], received_at: datetime) -> list[Outcome]:
        settings = self.settings
        return parse_events(
            lines,
            project_id=self.project_id,
            received_at=received_at,
            max_event_bytes=settings.max_event_bytes,
            max_future=self.max_future,
            max_depth=settings.max_property_depth,
            max_digits=settings.max_number_digits,
        )

    def _segment(self, lines: Sequence[bytes], received_at: datetime) -> list[Outcome]:
        settings = self.settings
        request = segment.Request([], None, None, None, nesting=1)
        outcomes: list[Outcome] = []
        for line in lines:
            try:
                message = segment.message(
                    msgspec.Raw(line), request, max_event_bytes=settings.max_event_bytes,
                    max_depth=settings.max_property_depth, max_digits=settings.max_number_digits,
                )  # fmt: skip
                outcomes.append(self._row(message, received_at))
            except InvalidEvent as exc:
                outcomes.append(exc)
        return outcomes

    def _posthog(self, lines: Sequence[bytes], received_at: datetime) -> list[Outcome]:
        settings = self.settings
        request = posthog.Request([], None, None, nesting=1)
        outcomes: list[Outcome] = []
        for line in lines:
            try:
                message = posthog.message(
                    msgspec.Raw(line), request, received_at=received_at,
                    max_event_bytes=settings.max_event_bytes,
                    max_depth=settings.max_property_depth, max_digits=settings.max_number_digits,
                )  # fmt: skip
                outcomes.append(self._row(message, received_at))
            except InvalidEvent as exc:
                outcomes.append(exc)
        return outcomes

    def _row(self, message: sdk.Message, received_at: datetime) -> Row:
        message.sent_at = None  # no skew correction: the module docstring says why
        return sdk.to_row_from(
            message, project_id=self.project_id, received_at=received_at,
            max_future=self.max_future,
        )  # fmt: skip
