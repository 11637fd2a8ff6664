"""POST /events, event by event: a bad event is rejected and the others stored;
timestamps and their skew correction; derived idempotency keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from posting import NDJSON, count_events, ev, post, rfc3339

from conftest import stored_keys

# --- per-event validation: the bad event is rejected, the good ones stored ----------------

NOW = datetime.now(UTC)

BAD_EVENTS: list[Any] = [
    pytest.param({"user_id": "u", "idempotency_key": "bad"}, id="no-event_name"),
    pytest.param({"event_name": "", "user_id": "u", "idempotency_key": "bad"}, id="empty-name"),
    pytest.param(
        {"event_name": "x" * 201, "user_id": "u", "idempotency_key": "bad"}, id="long-name"
    ),
    pytest.param({"event_name": 5, "user_id": "u", "idempotency_key": "bad"}, id="name-not-str"),
    pytest.param({"event_name": "e", "idempotency_key": "bad"}, id="no-user_id"),
    pytest.param(
        {"event_name": "e", "user_id": "u" * 201, "idempotency_key": "bad"}, id="long-user"
    ),
    pytest.param({"event_name": "e", "user_id": None, "idempotency_key": "bad"}, id="null-user"),
    pytest.param(ev("k" * 201), id="long-key"),
    pytest.param(ev("bad", channel="c" * 201), id="long-channel"),
    pytest.param(ev("bad", colour="red"), id="unknown-field"),
    pytest.param(ev("bad", timestamp="2026-11-01T10:00:00"), id="ts-no-offset"),
    pytest.param(ev("bad", timestamp="2026-11-01"), id="ts-date-only"),
    pytest.param(ev("bad", timestamp="yesterday"), id="ts-garbage"),
    pytest.param(ev("bad", timestamp=1_700_000_000), id="ts-number"),
    pytest.param(ev("bad", timestamp="1969-12-31T23:59:59Z"), id="ts-before-1970"),
    pytest.param(ev("bad", timestamp="1970-01-01T00:30:00+01:00"), id="ts-before-1970-offset"),
    pytest.param(ev("bad", timestamp=rfc3339(NOW + timedelta(hours=25))), id="ts-25h-future"),
    pytest.param(ev("bad", timestamp="9999-12-31T23:59:59-01:00"), id="ts-out-of-range"),
    pytest.param(
        ev("bad", timestamp=rfc3339(NOW), sent_at=rfc3339(NOW - timedelta(days=2))),
        id="corrected-ts-in-future",
    ),
    pytest.param(
        ev("bad", timestamp=rfc3339(NOW), sent_at=rfc3339(NOW + timedelta(days=60 * 366))),
        id="corrected-ts-before-1970",
    ),
    pytest.param(
        ev("bad", timestamp="0001-01-01T00:00:00Z", sent_at="9999-12-31T23:59:59Z"),
        id="skew-overflow",
    ),
    pytest.param(
        ev("bad", timestamp="0001-01-01T00:00:00+01:00", sent_at="0001-01-01T00:00:05+01:00"),
        id="ts-not-representable-in-utc",
    ),
    pytest.param(ev("bad", sent_at="later"), id="sent_at-garbage"),
    pytest.param(ev("bad", properties=[1, 2]), id="properties-list"),
    pytest.param(ev("bad", properties="x"), id="properties-string"),
    pytest.param(ev("bad", properties={"a": "nul\u0000"}), id="properties-nul"),
    pytest.param(ev("bad", user_id="a\u0000b"), id="user-nul"),
    pytest.param(ev("bad", channel=["web"]), id="channel-list"),
]


@pytest.mark.parametrize("bad", BAD_EVENTS)
async def test_invalid_event_is_rejected_and_the_rest_stored(
    client: AsyncTestClient[Any], db: asyncpg.Connection, bad: Any
) -> None:
    response = await post(client, [ev("good-0"), bad, ev("good-2")])
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, 1)
    assert body["results"][0] == {"index": 0, "status": "accepted"}
    assert body["results"][1]["index"] == 1
    assert body["results"][1]["status"] == "rejected"
    assert isinstance(body["results"][1]["error"], str) and body["results"][1]["error"]
    assert body["results"][2] == {"index": 2, "status": "accepted"}
    assert await stored_keys(db) == ["good-0", "good-2"]


async def test_only_invalid_events_is_400_and_stores_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, [ev("a", colour="red"), {"event_name": "x"}])
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (0, 2)
    assert [r["status"] for r in body["results"]] == ["rejected", "rejected"]
    assert await count_events(db) == 0


async def test_limits_on_lengths_are_inclusive(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    events = [
        ev("k" * 200, event_name="n" * 200, user_id="u" * 200, channel="c" * 200),
        ev("epoch", timestamp="1970-01-01T00:00:00Z"),
        ev("epoch-offset", timestamp="1970-01-01T01:00:00+01:00"),
        ev("soon", timestamp=rfc3339(datetime.now(UTC) + timedelta(hours=23))),
        ev("e", event_name="é"),
    ]
    response = await post(client, events)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events)
    assert await count_events(db) == len(events)


async def test_ndjson_bad_line_rejects_only_that_event(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    lines = [json.dumps(ev("n0")), '{"event_name": "e", "user_id": ', json.dumps(ev("n2"))]
    response = await client.post("/events", content="\n".join(lines).encode(), headers=NDJSON)
    assert response.status_code == 400, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert await stored_keys(db) == ["n0", "n2"]


# --- timestamps -------------------------------------------------------------------------


async def test_default_timestamp_is_received_time(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    before = datetime.now(UTC)
    response = await post(client, ev("k"))
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    row = await db.fetchrow("SELECT ts, received_at FROM events")
    assert row["ts"] == row["received_at"]
    assert before <= row["ts"] <= after


async def test_sent_at_corrects_client_clock_skew(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    # The client's clock is three days fast: its timestamp alone would be rejected as future.
    client_now = datetime.now(UTC) + timedelta(days=3)
    events = [
        ev(
            "fast",
            timestamp=rfc3339(client_now - timedelta(seconds=10)),
            sent_at=rfc3339(client_now),
        ),
        # A slow clock, with offsets in another zone.
        ev(
            "slow",
            timestamp="2001-01-01T12:00:00+05:00",
            sent_at="2001-01-01T12:01:30.5+05:00",
        ),
        # sent_at without timestamp changes nothing: the event happened when received.
        ev("sent-only", sent_at="2001-01-01T00:00:00Z"),
    ]
    response = await post(client, events)
    assert response.status_code == 200, response.text
    rows = {
        r["idempotency_key"]: r
        for r in await db.fetch("SELECT idempotency_key, ts, received_at FROM events")
    }
    assert rows["fast"]["ts"] == rows["fast"]["received_at"] - timedelta(seconds=10)
    assert rows["slow"]["ts"] == rows["slow"]["received_at"] - timedelta(seconds=90.5)
    assert rows["sent-only"]["ts"] == rows["sent-only"]["received_at"]


# --- derived idempotency keys ------------------------------------------------------------


async def test_retry_with_same_timestamp_is_deduplicated(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    event = {
        "event_name": "click",
        "user_id": "u1",
        "channel": "web",
        "timestamp": "2026-11-01T10:00:00Z",
        "properties": {"b": 2, "a": 1},
        "sent_at": "2026-11-01T10:00:01Z",
    }
    first = await post(client, event)
    assert first.json()["accepted"] == 1, first.text
    # A retry is sent later, and may order the properties differently or use another offset.
    retry = {
        **event,
        "timestamp": "2026-11-01T11:00:00+01:00",
        "properties": {"a": 1, "b": 2},
        "sent_at": "2026-11-01T10:05:00Z",
    }
    second = await post(client, retry)
    assert second.status_code == 200, second.text
    assert second.json() == {
        "accepted": 0,
        "duplicates": 1,
        "rejected": 0,
        "results": [{"index": 0, "status": "duplicate"}],
    }
    assert await count_events(db) == 1


async def test_derived_keys_distinguish_content(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    base = {"event_name": "click", "user_id": "u1", "timestamp": "2026-11-01T10:00:00Z"}
    variants = [
        base,
        {**base, "user_id": "u2"},
        {**base, "event_name": "view"},
        {**base, "channel": "ios"},
        {**base, "timestamp": "2026-11-01T10:00:00.001Z"},
        {**base, "properties": {"a": 1}},
        {**base, "properties": {"a": 2}},
    ]
    response = await post(client, variants)
    assert response.json()["accepted"] == len(variants), response.text
    keys = await stored_keys(db)
    assert len(set(keys)) == len(variants)


async def test_identical_events_without_timestamp_are_all_stored(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    event = {"event_name": "click", "user_id": "u1", "channel": "web"}
    response = await post(client, [event, event])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    response = await post(client, event)
    assert response.json()["accepted"] == 1, response.text
    assert await count_events(db) == 3
