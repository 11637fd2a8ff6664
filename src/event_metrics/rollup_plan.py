"""Planning a rollup answer: cut the window into buckets, cover each bucket with whole UTC
days, whole UTC hours and sub-hour raw pieces, and pick the rollup level to read."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from event_metrics.metrics import (
    MetricsQuery,
    hour_start,
    local_midnight,
    offset_change,
    utc_offset,
)
from event_metrics.rollups import LEVELS

HOUR_S, DAY_S = 3600, 86400
Span = tuple[int, int]  # [lo, hi) in epoch seconds


def level_for(dimensions: Iterable[str]) -> int:
    """The rollup level that keeps exactly these dimensions."""
    wanted = set(dimensions)
    for level, (name, channel) in LEVELS.items():
        if wanted == {d for d, keep in (("event_name", name), ("channel", channel)) if keep}:
            return level
    raise ValueError(f"no rollup level for {wanted}")


def bucket_bounds(query: MetricsQuery) -> list[int]:
    """Epoch starts of the buckets that cut [from, to), then `to` itself."""
    start, end = int(query.start.timestamp()), int(query.end.timestamp())
    if query.granularity == "total":
        return [start, end]
    zone = query.zone
    if query.granularity == "hour":
        return _hour_bounds(start, end, zone)
    bounds = [int(_floor(query.start, query.granularity, zone).timestamp())]
    while bounds[-1] < end:
        moment = datetime.fromtimestamp(bounds[-1], UTC)
        bounds.append(int(_next(moment, query.granularity, zone).timestamp()))
    bounds[-1] = end
    return bounds


def _hour_bounds(start: int, end: int, zone: ZoneInfo) -> list[int]:
    """Hour buckets (see metrics.hour_start): one starts at each whole local hour and at
    each change of UTC offset. On epoch seconds, 4,320 hours of 180 days take 3 ms."""
    local = datetime.fromtimestamp(start, zone)
    at = hour_start(start - local.minute * 60 - local.second, zone)
    offset = utc_offset(at, zone)
    bounds = [at]
    while at < end:
        at = at + HOUR_S - (at + offset) % HOUR_S  # the next whole hour on this offset
        after = utc_offset(at, zone)
        if after != offset:  # the offset changed on the way: a bucket starts there
            at = offset_change(bounds[-1], at, zone) or at
            after = utc_offset(at, zone)
        bounds.append(at)
        offset = after
    bounds[-1] = end
    return bounds


def _floor(moment: datetime, granularity: str, zone: ZoneInfo) -> datetime:
    day = moment.astimezone(zone).date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    return local_midnight(day, zone)


def _next(start: datetime, granularity: str, zone: ZoneInfo) -> datetime:
    day = start.astimezone(zone).date()
    if granularity == "day":
        day += timedelta(days=1)
    elif granularity == "week":
        day += timedelta(days=7)
    else:
        day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return local_midnight(day, zone)


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
class Plan:
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
    ) -> Plan:
        """Cover each bucket, the first one clipped to the window's start."""
        plan = cls(bounds, level, dimensions, bucketed)
        days: list[Span] = []
        hours: list[Span] = []
        pieces: list[Span] = []
        plan.direct = bucketed and bounds[0] >= start
        for lo, hi in itertools.pairwise(bounds):
            bucket_days, bucket_hours, bucket_pieces = cover(max(lo, start), hi)
            units = sum((b - a) // DAY_S for a, b in bucket_days)
            units += sum((b - a) // HOUR_S for a, b in bucket_hours)
            # A bucket made of several rollup rows needs their bitmaps to union.
            plan.bitmaps_up_front |= units > 1 or (units == 1 and bool(bucket_pieces))
            plan.direct &= units == 1 and not bucket_pieces
            days += bucket_days
            hours += bucket_hours
            pieces += bucket_pieces
        plan.days, plan.hours, plan.pieces = _merge(days), _merge(hours), _merge(pieces)
        plan.direct &= not (days and hours)
        return plan

    def only(self, indexes: Iterable[int]) -> Plan:
        """The same plan restricted to some of its buckets."""
        wanted = [(self.bounds[i], self.bounds[i + 1]) for i in indexes]

        def clip(spans: list[Span]) -> list[Span]:
            parts = [(max(a, lo), min(b, hi)) for lo, hi in wanted for a, b in spans]
            return _merge([(a, b) for a, b in parts if a < b])

        return replace(self, days=clip(self.days), hours=clip(self.hours), pieces=clip(self.pieces))

    def index(self, epoch: float) -> int:
        return bisect.bisect_right(self.bounds, epoch) - 1
