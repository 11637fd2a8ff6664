"""GET /metrics on PostgreSQL, checked against answers computed here in plain Python."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from conftest import ClientFactory, local_hour_start

GRANULARITIES = ["hour", "day", "week", "month", "total"]
GROUP_BYS: list[list[str]] = [[], ["channel"], ["event_name"], ["channel", "event_name"]]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")


class Event(NamedTuple):
    key: str
    event_name: str
    user_id: str
    channel: str | None
    ts: datetime


def z(text: str) -> datetime:
    return datetime.fromisoformat(text)


def as_json(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": event.key,
        "event_name": event.event_name,
        "user_id": event.user_id,
        "timestamp": event.ts.isoformat(),
    }
    if event.channel is not None:
        body["channel"] = event.channel
    return body


def generate_events(seed: int, count: int) -> list[Event]:
    """Random but reproducible events over ~12 days around the 2026 US fall-back."""
    rng = random.Random(seed)
    first = datetime(2026, 10, 24, tzinfo=UTC)
    span = int(timedelta(days=12).total_seconds())
    events = []
    for n in range(count):
        ts = first + timedelta(seconds=rng.randrange(span))
        if rng.random() < 0.1:
            ts += timedelta(microseconds=rng.randrange(1, 1_000_000))
        events.append(
            Event(
                key=f"e{n}",
                event_name=rng.choice(["signup", "click", "click", "purchase", "view"]),
                user_id=f"u{rng.randrange(12)}",
                channel=rng.choice(["web", "ios", "android", None]),
                ts=ts,
            )
        )
    return events


def bucket_of(ts: datetime, granularity: str, zone: ZoneInfo, start: datetime) -> datetime:
    """The local start of the bucket holding ts, computed with zoneinfo alone."""
    if granularity == "total":
        return start.astimezone(zone)
    local = ts.astimezone(zone)  # sets fold for the repeated hour of a fall-back
    if granularity == "hour":
        return datetime.fromtimestamp(local_hour_start(int(ts.timestamp()), zone), zone)
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())  # Monday
    elif granularity == "month":
        day = day.replace(day=1)
    return datetime.combine(day, time(0), tzinfo=zone)


def expected_metrics(
    events: list[Event],
    *,
    start: datetime,
    end: datetime,
    granularity: str,
    group_by: list[str],
    timezone: str,
    event_name: str | None,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    zone = ZoneInfo(timezone)
    chosen = [
        e
        for e in events
        if start <= e.ts < end and (event_name is None or e.event_name == event_name)
    ]
    groups: dict[tuple[Any, ...], list[Event]] = {}
    for event in chosen:
        bucket = bucket_of(event.ts, granularity, zone, start)
        # Keyed by the instant (timestamp): wall times tie across a fall-back.
        key = (bucket.timestamp(), bucket, *(getattr(event, d) for d in group_by))
        groups.setdefault(key, []).append(event)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return (key[0], [(v is not None, v or "") for v in key[2:]])

    series = []
    for key in sorted(groups, key=order):
        members = groups[key]
        row: dict[str, Any] = {"bucket_start": key[1]}
        row.update(zip(group_by, key[2:], strict=True))
        row["events"] = len(members)
        row["unique_users"] = len({e.user_id for e in members})
        series.append(row)
    total = {"events": len(chosen), "unique_users": len({e.user_id for e in chosen})}
    return total, series


def normalise(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bucket_start as (UTC instant, UTC offset), so formatting choices do not matter."""
    rows = []
    for row in series:
        start = row["bucket_start"]
        if isinstance(start, str):
            assert RFC3339.match(start), start
            start = datetime.fromisoformat(start)
        rows.append({**row, "bucket_start": (start.astimezone(UTC), start.utcoffset())})
    return rows


async def store(client: AsyncTestClient[Any], events: list[Event]) -> None:
    response = await client.post(
        "/events", content=json.dumps([as_json(e) for e in events]).encode()
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events)


async def get_metrics(client: AsyncTestClient[Any], **params: str) -> dict[str, Any]:
    response = await client.get("/metrics", params=params)
    assert response.status_code == 200, (params, response.text)
    body: dict[str, Any] = response.json()
    return body


def series_of(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(row["bucket_start"], row["events"]) for row in body["series"]]


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[AsyncTestClient[Any]]:
    # The fixed 2026 dates below must not depend on today's date being after them.
    async with make_client(max_future_seconds=100 * 365 * 24 * 3600) as client:
        yield client


# --- every granularity x group_by against the Python answer --------------------------------


@pytest.mark.parametrize("event_name", [None, "click"])
@pytest.mark.parametrize("timezone", ["UTC", "America/New_York", "Asia/Kolkata"])
async def test_every_granularity_and_grouping_matches_python(
    client: AsyncTestClient[Any], db: asyncpg.Connection, timezone: str, event_name: str | None
) -> None:
    events = generate_events(seed=20261101, count=400)
    # Events on the window's edges: `from` is inclusive, `to` exclusive.
    start, end = z("2026-10-26T00:00:00Z"), z("2026-11-04T12:00:00Z")
    events += [
        Event("edge-from", "click", "edge-user-1", "web", start),
        Event("edge-before-to", "click", "edge-user-2", None, end - timedelta(microseconds=1)),
        Event("edge-to", "click", "edge-user-3", "web", end),
        Event("edge-before-from", "click", "edge-user-4", "ios", start - timedelta(seconds=1)),
    ]
    await store(client, events)

    for granularity in GRANULARITIES:
        for group_by in [*GROUP_BYS, ["event_name", "channel"]]:
            params = {
                "from": "2026-10-26T00:00:00Z",
                "to": "2026-11-04T12:00:00Z",
                "granularity": granularity,
                "timezone": timezone,
            }
            if group_by:
                params["group_by"] = ",".join(group_by)
            if event_name is not None:
                params["event_name"] = event_name
            body = await get_metrics(client, **params)
            total, series = expected_metrics(
                events,
                start=start,
                end=end,
                granularity=granularity,
                group_by=group_by,
                timezone=timezone,
                event_name=event_name,
            )
            where = f"{granularity=} {group_by=}"
            assert body["total"] == total, where
            assert normalise(body["series"]) == normalise(series), where
            assert [list(row) for row in body["series"]] == [
                ["bucket_start", *group_by, "events", "unique_users"] for _ in series
            ], where
            assert body["granularity"] == granularity
            assert body["group_by"] == group_by
            assert body["timezone"] == timezone
            assert body["event_name"] == event_name
            assert body["backend"] == "postgres"
            zone = ZoneInfo(timezone)
            for name, instant in (("from", start), ("to", end)):
                assert RFC3339.match(body[name]), body[name]
                echoed = datetime.fromisoformat(body[name])
                assert echoed == instant
                assert echoed.utcoffset() == instant.astimezone(zone).utcoffset()
            if granularity == "total":
                assert all(row["bucket_start"] == body["from"] for row in body["series"])
                assert len(body["series"]) == len({tuple(r[d] for d in group_by) for r in series})


async def test_defaults_are_total_in_utc(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    events = generate_events(seed=7, count=50)
    await store(client, events)
    body = await get_metrics(
        client, **{"from": "2026-10-20T00:00:00Z", "to": "2026-11-10T00:00:00Z"}
    )
    assert body["granularity"] == "total"
    assert body["group_by"] == []
    assert body["timezone"] == "UTC"
    assert body["event_name"] is None
    users = len({e.user_id for e in events})
    assert body["total"] == {"events": 50, "unique_users": users}
    assert normalise(body["series"]) == normalise(
        [{"bucket_start": z("2026-10-20T00:00:00Z"), "events": 50, "unique_users": users}]
    )


async def test_empty_window(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    await store(client, generate_events(seed=3, count=10))
    for granularity in GRANULARITIES:
        body = await get_metrics(
            client,
            **{"from": "2025-01-01T00:00:00Z", "to": "2025-02-01T00:00:00Z"},
            granularity=granularity,
            group_by="channel",
        )
        assert body["total"] == {"events": 0, "unique_users": 0}
        assert body["series"] == []


async def test_missing_channel_is_null_and_unknown_event_name_is_empty(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    await store(
        client,
        [
            Event("a", "click", "u1", None, z("2026-11-01T10:00:00Z")),
            Event("b", "click", "u2", "", z("2026-11-01T10:00:00Z")),
            Event("c", "click", "u1", "web", z("2026-11-01T11:00:00Z")),
        ],
    )
    window = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}
    body = await get_metrics(client, **window, group_by="channel")
    assert [(r["channel"], r["events"], r["unique_users"]) for r in body["series"]] == [
        (None, 2, 2),
        ("web", 1, 1),
    ]
    body = await get_metrics(client, **window, event_name="nope", granularity="hour")
    assert body["total"] == {"events": 0, "unique_users": 0}
    assert body["series"] == []


# --- time zones, DST, weeks and months, with literal answers ------------------------------


async def test_new_york_fall_back_day_and_hours(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    moments = [
        "2026-11-01T03:59:59Z",  # Oct 31, 23:59:59 EDT
        "2026-11-01T04:00:00Z",  # Nov 1, 00:00 EDT
        "2026-11-01T05:15:00Z",  # 01:15 EDT
        "2026-11-01T05:45:00Z",  # 01:45 EDT
        "2026-11-01T06:15:00Z",  # 01:15 EST, the second 01:00 hour
        "2026-11-01T07:30:00Z",  # 02:30 EST
        "2026-11-02T04:59:59Z",  # Nov 1, 23:59:59 EST
        "2026-11-02T05:00:00Z",  # Nov 2, 00:00 EST
    ]
    events = [Event(f"k{n}", "click", f"u{n}", None, z(m)) for n, m in enumerate(moments)]
    await store(client, events)
    tz = "America/New_York"

    hours = await get_metrics(
        client,
        **{"from": "2026-11-01T04:00:00Z", "to": "2026-11-01T08:00:00Z"},
        granularity="hour",
        timezone=tz,
    )
    assert series_of(hours) == [
        ("2026-11-01T00:00:00-04:00", 1),
        ("2026-11-01T01:00:00-04:00", 2),
        ("2026-11-01T01:00:00-05:00", 1),
        ("2026-11-01T02:00:00-05:00", 1),
    ]

    days = await get_metrics(
        client,
        **{"from": "2026-10-31T04:00:00Z", "to": "2026-11-03T05:00:00Z"},
        granularity="day",
        timezone=tz,
    )
    assert series_of(days) == [
        ("2026-10-31T00:00:00-04:00", 1),
        ("2026-11-01T00:00:00-04:00", 6),
        ("2026-11-02T00:00:00-05:00", 1),
    ]
    starts = [datetime.fromisoformat(b) for b, _ in series_of(days)]
    assert starts[2] - starts[1] == timedelta(hours=25)
    assert days["from"] == "2026-10-31T00:00:00-04:00"
    assert days["to"] == "2026-11-03T00:00:00-05:00"


@pytest.mark.parametrize("plan", ["raw", "rollup"])
async def test_lord_howe_hours_across_half_hour_dst_changes(
    client: AsyncTestClient[Any], db: asyncpg.Connection, plan: str
) -> None:
    """Lord Howe moves its clocks by 30 minutes: on 2026-04-05 02:00 becomes 01:30 again,
    on 2026-10-04 02:00 becomes 02:30. Buckets are (local hour, UTC offset) pairs."""
    rng = random.Random(7)
    windows = [("2026-04-04T11:00:00Z", "2026-04-04T18:00:00Z"),
               ("2026-10-03T12:00:00Z", "2026-10-03T19:00:00Z")]  # fmt: skip
    events = []
    for start, _ in windows:
        for n in range(7 * 60 // 4):  # one every 4 minutes, on and off the half hours
            moment = z(start) + timedelta(minutes=4 * n, seconds=rng.randrange(60))
            user, channel = f"u{rng.randrange(9)}", rng.choice(["web", None])
            events.append(Event(f"lh-{start}-{n}", "click", user, channel, moment))
    await store(client, events)
    tz = "Australia/Lord_Howe"
    starts = set()
    for start, end in windows:
        body = await get_metrics(
            client, **{"from": start, "to": end}, granularity="hour", group_by="channel",
            timezone=tz, plan=plan,
        )  # fmt: skip
        total, series = expected_metrics(
            events, start=z(start), end=z(end), granularity="hour", group_by=["channel"],
            timezone=tz, event_name=None,
        )  # fmt: skip
        assert body["total"] == total
        assert normalise(body["series"]) == normalise(series)
        starts |= {row["bucket_start"][11:] for row in body["series"]}
    # A bucket starts at each whole hour and at each change of offset.
    assert {"01:00:00+11:00", "01:30:00+10:30", "02:00:00+10:30"} <= starts  # April
    assert {"01:00:00+10:30", "02:30:00+11:00", "03:00:00+11:00"} <= starts  # October
    assert not {"02:00:00+11:00", "01:30:00+11:00"} & starts


async def test_new_york_spring_forward_day_and_hours(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    moments = [
        "2026-03-08T05:00:00Z",  # Mar 8, 00:00 EST
        "2026-03-08T06:59:59Z",  # 01:59:59 EST
        "2026-03-08T07:00:00Z",  # 03:00 EDT: 02:00 never happens
        "2026-03-09T03:59:59Z",  # Mar 8, 23:59:59 EDT
        "2026-03-09T04:00:00Z",  # Mar 9, 00:00 EDT
    ]
    events = [Event(f"k{n}", "click", "u", None, z(m)) for n, m in enumerate(moments)]
    await store(client, events)
    window = {"from": "2026-03-08T05:00:00Z", "to": "2026-03-10T04:00:00Z"}
    tz = "America/New_York"
    days = await get_metrics(client, **window, granularity="day", timezone=tz)
    assert series_of(days) == [("2026-03-08T00:00:00-05:00", 4), ("2026-03-09T00:00:00-04:00", 1)]
    hours = await get_metrics(client, **window, granularity="hour", timezone=tz)
    assert series_of(hours)[:3] == [
        ("2026-03-08T00:00:00-05:00", 1),
        ("2026-03-08T01:00:00-05:00", 1),
        ("2026-03-08T03:00:00-04:00", 1),
    ]


async def test_kolkata_half_hour_offset(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    moments = [
        "2026-10-31T18:29:59Z",  # Oct 31, 23:59:59 IST
        "2026-10-31T18:30:00Z",  # Nov 1, 00:00 IST
        "2026-11-01T00:29:59Z",  # 05:59:59 IST
        "2026-11-01T00:30:00Z",  # 06:00 IST
        "2026-11-01T00:59:59Z",  # 06:29:59 IST
        "2026-11-01T01:29:59Z",  # 06:59:59 IST
    ]
    events = [Event(f"k{n}", "click", f"u{n % 2}", None, z(m)) for n, m in enumerate(moments)]
    await store(client, events)
    tz = "Asia/Kolkata"
    window = {"from": "2026-10-31T00:00:00Z", "to": "2026-11-02T00:00:00Z"}
    hours = await get_metrics(client, **window, granularity="hour", timezone=tz)
    assert [(r["bucket_start"], r["events"], r["unique_users"]) for r in hours["series"]] == [
        ("2026-10-31T23:00:00+05:30", 1, 1),
        ("2026-11-01T00:00:00+05:30", 1, 1),
        ("2026-11-01T05:00:00+05:30", 1, 1),
        ("2026-11-01T06:00:00+05:30", 3, 2),
    ]
    days = await get_metrics(client, **window, granularity="day", timezone=tz)
    assert series_of(days) == [("2026-10-31T00:00:00+05:30", 1), ("2026-11-01T00:00:00+05:30", 5)]
    utc_days = await get_metrics(client, **window, granularity="day")
    assert series_of(utc_days) == [
        ("2026-10-31T00:00:00+00:00", 2),
        ("2026-11-01T00:00:00+00:00", 4),
    ]


async def test_weeks_start_on_monday(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    moments = [
        "2026-10-26T00:00:00Z",  # Monday
        "2026-11-01T18:29:59Z",  # Sunday in UTC and in Kolkata (23:59:59)
        "2026-11-01T18:30:00Z",  # Sunday in UTC, Monday 00:00 in Kolkata
        "2026-11-01T23:59:59Z",  # Sunday in UTC
        "2026-11-02T00:00:00Z",  # Monday
    ]
    events = [Event(f"k{n}", "click", "u", None, z(m)) for n, m in enumerate(moments)]
    await store(client, events)
    window = {"from": "2026-10-28T00:00:00Z", "to": "2026-11-09T00:00:00Z"}
    weeks = await get_metrics(client, **window, granularity="week")
    # The first bucket starts on the Monday before `from`.
    assert series_of(weeks) == [("2026-10-26T00:00:00+00:00", 3), ("2026-11-02T00:00:00+00:00", 1)]
    weeks = await get_metrics(client, **window, granularity="week", timezone="Asia/Kolkata")
    assert series_of(weeks) == [("2026-10-26T00:00:00+05:30", 1), ("2026-11-02T00:00:00+05:30", 3)]
    # Monday 00:00 UTC is still Sunday evening in New York.
    weeks = await get_metrics(client, **window, granularity="week", timezone="America/New_York")
    assert series_of(weeks) == [("2026-10-26T00:00:00-04:00", 4)]


async def test_months(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    moments = [
        "2026-10-15T12:00:00Z",
        "2026-11-01T03:30:00Z",  # November in UTC, Oct 31 23:30 in New York
        "2026-11-20T12:00:00Z",
        "2026-12-01T04:59:59Z",  # December in UTC, Nov 30 23:59:59 in New York
        "2027-01-01T00:00:00Z",  # January in UTC, Dec 31 in New York
    ]
    events = [Event(f"k{n}", "click", "u", None, z(m)) for n, m in enumerate(moments)]
    await store(client, events)
    window = {"from": "2026-10-01T00:00:00Z", "to": "2027-02-01T00:00:00Z"}
    utc = await get_metrics(client, **window, granularity="month")
    assert series_of(utc) == [
        ("2026-10-01T00:00:00+00:00", 1),
        ("2026-11-01T00:00:00+00:00", 2),
        ("2026-12-01T00:00:00+00:00", 1),
        ("2027-01-01T00:00:00+00:00", 1),
    ]
    ny = await get_metrics(client, **window, granularity="month", timezone="America/New_York")
    assert series_of(ny) == [
        ("2026-10-01T00:00:00-04:00", 2),
        ("2026-11-01T00:00:00-04:00", 2),
        ("2026-12-01T00:00:00-05:00", 1),
    ]


async def test_total_with_groups_starts_every_row_at_from(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    await store(
        client,
        [
            Event("a", "click", "u1", "web", z("2026-11-01T10:00:00Z")),
            Event("b", "click", "u2", "web", z("2026-11-02T10:00:00Z")),
            Event("c", "view", "u1", None, z("2026-11-03T10:00:00Z")),
        ],
    )
    body = await get_metrics(
        client,
        **{"from": "2026-11-01T00:00:00+05:30", "to": "2026-11-05T00:00:00+05:30"},
        group_by="event_name,channel",
        timezone="Asia/Kolkata",
    )
    assert body["from"] == "2026-11-01T00:00:00+05:30"
    assert body["series"] == [
        {
            "bucket_start": "2026-11-01T00:00:00+05:30",
            "event_name": "click",
            "channel": "web",
            "events": 2,
            "unique_users": 2,
        },
        {
            "bucket_start": "2026-11-01T00:00:00+05:30",
            "event_name": "view",
            "channel": None,
            "events": 1,
            "unique_users": 1,
        },
    ]
    assert body["total"] == {"events": 3, "unique_users": 2}


async def test_unencoded_plus_in_offset(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    await store(client, [Event("a", "click", "u1", None, z("2026-10-31T18:30:00Z"))])
    # A '+' left unencoded in a query string arrives as a space.
    response = await client.get(
        "/metrics?from=2026-11-01T00:00:00+05:30&to=2026-11-02T00:00:00+05:30"
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"]["events"] == 1
    assert datetime.fromisoformat(response.json()["from"]) == z("2026-10-31T18:30:00Z")


# --- invalid parameters ------------------------------------------------------------------

WINDOW = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"to": WINDOW["to"]}, "from", id="no-from"),
        pytest.param({"from": WINDOW["from"]}, "to", id="no-to"),
        pytest.param({}, "from", id="neither"),
        pytest.param({**WINDOW, "from": "yesterday"}, "from", id="from-garbage"),
        pytest.param({**WINDOW, "from": "2026-11-01T00:00:00"}, "from", id="from-no-offset"),
        pytest.param({**WINDOW, "from": "2026-11-01"}, "from", id="from-date-only"),
        pytest.param({**WINDOW, "from": "2026-11-01T00:00:00.5Z"}, "from", id="from-fraction"),
        pytest.param({**WINDOW, "from": "1969-12-31T00:00:00Z"}, "from", id="from-before-1970"),
        pytest.param({**WINDOW, "to": "2026-13-01T00:00:00Z"}, "to", id="to-bad-month"),
        pytest.param({**WINDOW, "to": "2026-11-02T00:00:00.000001Z"}, "to", id="to-fraction"),
        pytest.param({**WINDOW, "to": WINDOW["from"]}, "to", id="to-equals-from"),
        pytest.param({**WINDOW, "to": "2026-10-31T00:00:00Z"}, "to", id="to-before-from"),
        pytest.param({**WINDOW, "to": "2027-12-06T00:00:01Z"}, "to", id="window-too-long"),
        pytest.param({**WINDOW, "granularity": "minute"}, "granularity", id="granularity"),
        pytest.param({**WINDOW, "granularity": "HOUR"}, "granularity", id="granularity-case"),
        pytest.param({**WINDOW, "group_by": "user_id"}, "group_by", id="group-unknown"),
        pytest.param({**WINDOW, "group_by": "channel,channel"}, "group_by", id="group-twice"),
        pytest.param({**WINDOW, "group_by": "channel;event_name"}, "group_by", id="group-sep"),
        pytest.param({**WINDOW, "group_by": "ts"}, "group_by", id="group-column"),
        pytest.param({**WINDOW, "timezone": "Mars/Olympus_Mons"}, "timezone", id="tz-unknown"),
        pytest.param({**WINDOW, "timezone": "+05:30"}, "timezone", id="tz-offset"),
        pytest.param({**WINDOW, "timezone": "../../etc/passwd"}, "timezone", id="tz-path"),
        pytest.param({**WINDOW, "event_name": "x" * 201}, "event_name", id="event-name-long"),
        pytest.param({**WINDOW, "backend": "mysql"}, "backend", id="backend-unknown"),
        pytest.param({**WINDOW, "plan": "fastest"}, "plan", id="plan-unknown"),
    ],
)
async def test_invalid_parameter_is_400_naming_it(
    client: AsyncTestClient[Any], params: dict[str, str], parameter: str
) -> None:
    response = await client.get("/metrics", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert body["parameter"] == parameter
    assert isinstance(body["detail"], str) and body["detail"]


async def test_window_limit_is_a_setting(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(max_window_days=7) as client:
        ok = await client.get(
            "/metrics", params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-08T00:00:00Z"}
        )
        assert ok.status_code == 200, ok.text
        too_long = await client.get(
            "/metrics", params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-08T00:00:01Z"}
        )
        assert too_long.status_code == 400, too_long.text
        assert too_long.json()["parameter"] == "to"


async def test_whole_second_offsets_and_spaces_are_accepted(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    body = await get_metrics(
        client,
        **{"from": "2026-11-01T00:00:00-04:00", "to": "2026-11-02T00:00:00+00:00"},
        group_by=" channel , event_name ",
        granularity="",
    )
    assert body["group_by"] == ["channel", "event_name"]
    assert body["granularity"] == "total"
