"""Covering a window for a rollup answer: each bucket with whole UTC days, whole UTC hours
and sub-hour raw pieces.

A `Cover`, not a plan: "plan" is the /metrics parameter (auto, raw or rollup) and the
X-Metrics-Plan header, metrics_service.Plan."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from event_metrics.buckets import DAY_S, HOUR_S

Span = tuple[int, int]  # [lo, hi) in epoch seconds


def cover(lo: int, hi: int) -> tuple[list[Span], list[Span], list[Span]]:
    """Split [lo, hi) into whole UTC days, whole UTC hours and sub-hour raw pieces."""
    first_hour, last_hour = -(-lo // HOUR_S) * HOUR_S, hi // HOUR_S * HOUR_S
    if first_hour >= last_hour:
        return [], [], [(lo, hi)]
    pieces = [s for s in ((lo, first_hour), (last_hour, hi)) if s[0] < s[1]]
    first_day, last_day = -(-first_hour // DAY_S) * DAY_S, last_hour // DAY_S * DAY_S
    if first_day >= last_day:
        return [], [(first_hour, last_hour)], pieces
    hours = [s for s in ((first_hour, first_day), (last_day, last_hour)) if s[0] < s[1]]
    return [(first_day, last_day)], hours, pieces


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for lo, hi in sorted(spans):
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


@dataclass
class Cover:
    """The rollup rows and raw pieces that answer one set of buckets at one level."""

    bounds: list[int]
    level: int
    dimensions: tuple[str, ...]  # what each cell is grouped by in the output
    bucketed: bool
    days: list[Span] = field(default_factory=list)
    hours: list[Span] = field(default_factory=list)
    pieces: list[Span] = field(default_factory=list)
    bitmaps_up_front: bool = False
    # Each bucket is exactly one rollup row per group, of one grain, starting at the
    # bucket's own start: the rows are the answer as they are, with no union and no raw
    # piece (hourly in a whole-hour zone, daily in UTC).
    direct: bool = False

    @classmethod
    def make(
        cls,
        bounds: list[int],
        start: int,
        level: int,
        dimensions: tuple[str, ...],
        *,
        bucketed: bool,
    ) -> Cover:
        """Cover each bucket, the first one clipped to the window's start."""
        made = cls(bounds, level, dimensions, bucketed)
        days: list[Span] = []
        hours: list[Span] = []
        pieces: list[Span] = []
        made.direct = bucketed and bounds[0] >= start
        for lo, hi in itertools.pairwise(bounds):
            bucket_days, bucket_hours, bucket_pieces = cover(max(lo, start), hi)
            units = sum((b - a) // DAY_S for a, b in bucket_days)
            units += sum((b - a) // HOUR_S for a, b in bucket_hours)
            # A bucket made of several rollup rows needs their bitmaps to union.
            made.bitmaps_up_front |= units > 1 or (units == 1 and bool(bucket_pieces))
            made.direct &= units == 1 and not bucket_pieces
            days += bucket_days
            hours += bucket_hours
            pieces += bucket_pieces
        made.days, made.hours, made.pieces = _merge(days), _merge(hours), _merge(pieces)
        made.direct &= not (days and hours)
        return made

    def only(self, indexes: Iterable[int]) -> Cover:
        """The same cover restricted to some of its buckets."""
        wanted = [(self.bounds[i], self.bounds[i + 1]) for i in indexes]

        def clip(spans: list[Span]) -> list[Span]:
            parts = [(max(a, lo), min(b, hi)) for lo, hi in wanted for a, b in spans]
            return _merge([(a, b) for a, b in parts if a < b])

        return replace(self, days=clip(self.days), hours=clip(self.hours), pieces=clip(self.pieces))

    def index(self, epoch: float) -> int:
        return bisect.bisect_right(self.bounds, epoch) - 1
