"""Bucket labels from both engines become the same instants."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from event_metrics.buckets import bucket_start, hour_start, local_midnight

NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
WINDOW_START = datetime(2026, 11, 1, 4, tzinfo=UTC)


def test_the_two_fall_back_hours_stay_apart() -> None:
    first = int(datetime(2026, 11, 1, 5, 0, tzinfo=UTC).timestamp())  # 01:00 -04:00
    second = int(datetime(2026, 11, 1, 6, 0, tzinfo=UTC).timestamp())  # 01:00 -05:00
    starts = [bucket_start(t, "hour", NEW_YORK, WINDOW_START) for t in (first, second)]
    assert [s.isoformat() for s in starts] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
    ]


def test_a_day_label_is_local_midnight_and_total_is_the_window_start() -> None:
    day = bucket_start(date(2026, 11, 1), "day", NEW_YORK, WINDOW_START)
    assert day.isoformat() == "2026-11-01T00:00:00-04:00"
    assert bucket_start(None, "total", NEW_YORK, WINDOW_START) == WINDOW_START.astimezone(NEW_YORK)


def test_lord_howe_half_hour_bucket_starts_at_the_offset_change() -> None:
    # 2026-10-04 at 02:00 local (+10:30) clocks go to 02:30 (+11:00): the SQL label of the
    # instant just after the change reads 02:00 on the new offset, before the change.
    change = int(datetime(2026, 10, 3, 15, 30, tzinfo=UTC).timestamp())
    label = change - 30 * 60
    assert hour_start(label, LORD_HOWE) == change
    assert datetime.fromtimestamp(change, LORD_HOWE).isoformat() == "2026-10-04T02:30:00+11:00"


def test_midnight_that_does_not_exist_maps_to_the_first_instant() -> None:
    # Santiago skips 00:00-01:00 on 2026-09-06.
    start = local_midnight(date(2026, 9, 6), ZoneInfo("America/Santiago"))
    assert start == datetime(2026, 9, 6, 4, tzinfo=UTC)
