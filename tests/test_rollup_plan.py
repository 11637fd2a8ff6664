"""Planning a rollup answer: bucket bounds and which plans read rollup rows as they are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from event_metrics.metrics import parse_query
from event_metrics.rollup_plan import Plan, bucket_bounds, level_for


def local_hour_starts(start: datetime, end: datetime, zone: ZoneInfo) -> list[int]:
    """Hour buckets by definition: every whole minute whose local time reads HH:00:00,
    found by scanning minute by minute, plus the one at or before `start`, then `end`."""
    minute = timedelta(minutes=1)
    first = start.replace(second=0)
    while first.astimezone(zone).minute:
        first -= minute
    bounds = [int(first.timestamp())]
    moment = first + minute
    while moment < end:
        if moment.astimezone(zone).minute == 0:
            bounds.append(int(moment.timestamp()))
        moment += minute
    return [*bounds, int(end.timestamp())]


@pytest.mark.parametrize(
    "zone",
    ["UTC", "America/New_York", "Europe/London", "Asia/Kolkata", "Asia/Kathmandu",
    ],
)  # fmt: skip
def test_hour_bounds_are_the_local_hour_starts(zone: str) -> None:
    # Lord Howe moves by 30 minutes on Oct 4, London on Oct 25, New York on Nov 1.
    start, end = "2026-09-28T00:17:00Z", "2026-11-05T09:00:00Z"
    query = parse_query(
        start=start, end=end, event_name=None, granularity="hour", group_by=None,
        timezone=zone, max_window_days=400,
    )  # fmt: skip
    expected = local_hour_starts(query.start, query.end, ZoneInfo(zone))
    assert bucket_bounds(query) == expected


def make_plan(start: str, end: str, granularity: str, zone: str) -> Plan:
    query = parse_query(
        start=start, end=end, event_name=None, granularity=granularity, group_by="channel",
        timezone=zone, max_window_days=400,
    )  # fmt: skip
    bounds = bucket_bounds(query)
    return Plan.make(
        bounds,
        int(query.start.timestamp()),
        level_for(["channel"]),
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
    plan = make_plan(start, end, granularity, zone)
    assert plan.direct is direct
    if direct:
        assert not plan.pieces and not plan.bitmaps_up_front
        assert bool(plan.days) != bool(plan.hours)


def test_only_keeps_the_chosen_buckets() -> None:
    plan = make_plan("2026-10-24T00:00:00Z", "2026-10-25T00:00:00Z", "hour", "UTC")
    base = int(datetime(2026, 10, 24, tzinfo=UTC).timestamp())
    part = plan.only([0, 1, 5])
    assert part.hours == [(base, base + 7200), (base + 5 * 3600, base + 6 * 3600)]
    assert part.days == [] and part.pieces == []
    assert plan.hours == [(base, base + 86400)]
