"""Planning a rollup answer: bucket bounds and which covers read rollup rows as they are."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from conftest import local_hour_start
from event_metrics.buckets import bucket_bounds as bounds_of
from event_metrics.metrics import MetricsQuery, parse_query
from event_metrics.rollup_cover import Cover
from event_metrics.schema import level_for


def bucket_bounds(query: MetricsQuery) -> list[int]:
    return bounds_of(query.start, query.end, query.granularity, query.zone)


def local_hour_starts(start: datetime, end: datetime, zone: ZoneInfo) -> list[int]:
    """Every distinct hour bucket of the instants in [start, end), then `end`.

    The same definition as conftest.local_hour_start (a bucket starts at each minute whose
    local clock reads HH:00 or whose UTC offset differs from the minute before), applied in
    one forward scan instead of a scan back from every minute.
    """
    lo, hi = int(start.timestamp()), int(end.timestamp())

    def offset(moment: int) -> object:
        return datetime.fromtimestamp(moment, zone).utcoffset()

    first = local_hour_start(lo, zone)
    starts = [first]
    previous = offset(first)
    for minute in range(first + 60, hi, 60):
        current = offset(minute)
        if current != previous or not datetime.fromtimestamp(minute, zone).minute:
            starts.append(minute)
        previous = current
    return [*starts, hi]


def make_query(start: str, end: str, granularity: str, zone: str) -> MetricsQuery:
    return parse_query(
        project_id=1,
        start=start, end=end, event_name=None, granularity=granularity, group_by="channel",
        timezone=zone, max_window_days=400,
    )  # fmt: skip


@pytest.mark.parametrize(
    "zone",
    ["UTC", "America/New_York", "Europe/London", "Asia/Kolkata", "Asia/Kathmandu",
     "Australia/Lord_Howe"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Lord Howe moves by 30 minutes on Apr 5 and Oct 4, London by an hour on Mar 29
        # and Oct 25, New York on Nov 1.
        ("2026-03-27T00:17:00Z", "2026-04-08T09:00:00Z"),
        ("2026-09-28T00:17:00Z", "2026-11-05T09:00:00Z"),
    ],
)
def test_hour_bounds_are_the_local_hour_starts(zone: str, start: str, end: str) -> None:
    query = make_query(start, end, "hour", zone)
    expected = local_hour_starts(query.start, query.end, ZoneInfo(zone))
    assert bucket_bounds(query) == expected


@pytest.mark.parametrize(
    ("start", "end", "local_starts"),
    [
        # 02:00 becomes 02:30: hour 02 lasts 30 minutes.
        ("2026-10-03T13:00:00Z", "2026-10-03T18:00:00Z",
         ["23:00+10:30", "00:00+10:30", "01:00+10:30", "02:30+11:00", "03:00+11:00",
          "04:00+11:00"]),
        # 02:00 becomes 01:30 again: hour 01 comes twice, 60 then 30 minutes.
        ("2026-04-04T12:00:00Z", "2026-04-04T17:00:00Z",
         ["23:00+11:00", "00:00+11:00", "01:00+11:00", "01:30+10:30", "02:00+10:30",
          "03:00+10:30"]),
    ],
)  # fmt: skip
def test_lord_howe_hours_across_its_half_hour_dst_changes(
    start: str, end: str, local_starts: list[str]
) -> None:
    zone = ZoneInfo("Australia/Lord_Howe")
    bounds = bucket_bounds(make_query(start, end, "hour", zone.key))
    starts = [
        datetime.fromtimestamp(b, zone).isoformat(timespec="minutes")[11:] for b in bounds[:-1]
    ]
    assert starts == local_starts


def make_cover(start: str, end: str, granularity: str, zone: str) -> Cover:
    query = make_query(start, end, granularity, zone)
    bounds = bucket_bounds(query)
    return Cover.make(
        bounds,
        int(query.start.timestamp()),
        level_for({"channel"}).number,
        ("channel",),
        bucketed=granularity != "total",
    )


@pytest.mark.parametrize(
    ("start", "end", "granularity", "zone", "direct"),
    [
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "hour", "UTC", True),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "hour", "America/New_York", True),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "day", "UTC", True),
        # Hours that start at :30, or days that are not UTC days, need pieces or unions.
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "hour", "Asia/Kolkata", False),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "day", "America/New_York", False),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "week", "UTC", False),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "total", "UTC", False),
        ("2026-10-24T00:30:00Z", "2026-11-09T00:00:00Z", "hour", "UTC", False),
        ("2026-10-24T00:00:00Z", "2026-11-09T00:30:00Z", "hour", "UTC", False),
        ("2026-10-24T00:00:00Z", "2026-11-08T12:00:00Z", "day", "UTC", False),
        # London's 25-hour Oct 25, clipped at 00:00 UTC, is exactly one UTC day; the
        # bucket still starts at 23:00 UTC the day before, so it cannot be read as is.
        ("2026-10-25T00:00:00Z", "2026-10-30T00:00:00Z", "day", "Europe/London", False),
    ],
)
def test_direct_plans(start: str, end: str, granularity: str, zone: str, direct: bool) -> None:
    cover = make_cover(start, end, granularity, zone)
    assert cover.direct is direct
    if direct:
        assert not cover.pieces and not cover.bitmaps_up_front
        assert bool(cover.days) != bool(cover.hours)


def test_only_keeps_the_chosen_buckets() -> None:
    cover = make_cover("2026-10-24T00:00:00Z", "2026-10-25T00:00:00Z", "hour", "UTC")
    base = int(datetime(2026, 10, 24, tzinfo=UTC).timestamp())
    part = cover.only([0, 1, 5])
    assert part.hours == [(base, base + 7200), (base + 5 * 3600, base + 6 * 3600)]
    assert part.days == [] and part.pieces == []
    assert cover.hours == [(base, base + 86400)]
