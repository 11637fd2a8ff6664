"""POST /events against the real app and PostgreSQL: shapes, limits, validation, queueing."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from conftest import ClientFactory, ConcurrentClientFactory, stored_keys, wait_until
from event_metrics.payload import MalformedPayload, PayloadTooLarge, read_body
from event_metrics.schema import Row
from event_metrics.writer import init_writer_connection, write_copy, write_unnest

NDJSON = {"Content-Type": "application/x-ndjson"}


def ev(key: str, **fields: Any) -> dict[str, Any]:
    """A valid event with an explicit idempotency key, so the stored row can be found."""
    event: dict[str, Any] = {"event_name": "signup", "user_id": "u1", "idempotency_key": key}
    event.update(fields)
    return event


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def count_events(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM events")
    return count


async def post(client: Any, body: Any, **kwargs: Any) -> Any:
    return await client.post("/events", content=json.dumps(body).encode(), **kwargs)


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- body shapes, content types, encodings ------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda events: events[0], id="object"),
        pytest.param(lambda events: events, id="array"),
        pytest.param(lambda events: {"events": events}, id="wrapped"),
    ],
)
async def test_body_shapes_store_every_event(
    client: AsyncTestClient[Any], db: asyncpg.Connection, shape: Any
) -> None:
    events = [
        ev(
            "k1",
            event_name="purchase",
            user_id="alice",
            channel="web",
            timestamp="2026-11-01T10:00:00.250+02:00",
            properties={"amount": 12.5, "items": ["a", "b"], "nested": {"x": None}},
        )
    ]
    response = await post(client, shape(events))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"index": 0, "status": "accepted"}],
    }
    row = await db.fetchrow("SELECT * FROM events")
    assert row["idempotency_key"] == "k1"
    assert row["event_name"] == "purchase"
    assert row["user_id"] == "alice"
    assert row["channel"] == "web"
    assert row["ts"] == datetime(2026, 11, 1, 8, 0, 0, 250_000, tzinfo=UTC)
    assert json.loads(row["properties"]) == {
        "amount": 12.5,
        "items": ["a", "b"],
        "nested": {"x": None},
    }


async def test_array_and_wrapped_batches(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, [ev("a1"), ev("a2"), ev("a3")])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3
    response = await post(client, {"events": [ev("w1"), ev("w2")]})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    assert await stored_keys(db) == ["a1", "a2", "a3", "w1", "w2"]


async def test_event_without_channel_or_properties(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, {"event_name": "e", "user_id": "u", "idempotency_key": "k"})
    assert response.status_code == 200, response.text
    row = await db.fetchrow("SELECT channel, properties FROM events")
    assert row["channel"] == ""
    assert row["properties"] is None


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/x-ndjson; charset=utf-8", "application/ndjson"],
)
async def test_ndjson(
    client: AsyncTestClient[Any], db: asyncpg.Connection, content_type: str
) -> None:
    body = "\n".join(json.dumps(e) for e in [ev("n1"), ev("n2"), ev("n3")])
    body = body.replace("\n", "\n\n", 1) + "\n"  # blank lines are skipped
    response = await client.post(
        "/events", content=body.encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3
    assert await stored_keys(db) == ["n1", "n2", "n3"]


async def test_ndjson_line_that_is_not_an_object_rejects_the_body(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    body = json.dumps(ev("n1")) + "\n[1, 2]\n"
    response = await client.post("/events", content=body.encode(), headers=NDJSON)
    assert_error_body(response, 400)
    assert await count_events(db) == 0


async def test_missing_content_type_is_read_as_json(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await client.post("/events", content=json.dumps([ev("k")]).encode())
    assert response.status_code == 200, response.text
    assert await stored_keys(db) == ["k"]


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip"])
async def test_gzip_json(
    client: AsyncTestClient[Any], db: asyncpg.Connection, encoding: str
) -> None:
    body = gzip.compress(json.dumps([ev("g1"), ev("g2")]).encode())
    response = await client.post(
        "/events",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    assert await stored_keys(db) == ["g1", "g2"]


async def test_gzip_ndjson(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    body = gzip.compress(b"\n".join(json.dumps(ev(f"g{i}")).encode() for i in range(5)))
    response = await client.post(
        "/events", content=body, headers={**NDJSON, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert await stored_keys(db) == [f"g{i}" for i in range(5)]


async def test_gzip_with_several_members(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    # `cat a.gz b.gz` is one valid gzip body; every member's events count.
    body = b"".join(gzip.compress(json.dumps(ev(f"m{i}")).encode() + b"\n") for i in range(3))
    response = await client.post(
        "/events", content=body, headers={**NDJSON, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3
    assert await stored_keys(db) == ["m0", "m1", "m2"]


async def chunked(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1 << 20])
async def test_read_body_across_chunk_boundaries(chunk_size: int) -> None:
    # The test client sends a body in one piece; a real server streams it in chunks.
    members = [b"a" * 50, b"b" * 300, b"", b"c" * 10]
    body = b"".join(gzip.compress(m) for m in members)
    read = await read_body(chunked(body, chunk_size), encoding="gzip", max_bytes=360)
    assert read == b"".join(members)
    with pytest.raises(PayloadTooLarge):
        await read_body(chunked(body, chunk_size), encoding="gzip", max_bytes=359)
    with pytest.raises(MalformedPayload):
        await read_body(chunked(body[:-3], chunk_size), encoding="gzip", max_bytes=360)
    plain = b"x" * 500
    assert await read_body(chunked(plain, chunk_size), encoding=None, max_bytes=500) == plain
    with pytest.raises(PayloadTooLarge):
        await read_body(chunked(plain, chunk_size), encoding="identity", max_bytes=499)


async def test_invalid_gzip_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    plain = json.dumps([ev("g1")]).encode()
    truncated = gzip.compress(plain)[:-12]
    trailing = gzip.compress(plain) + b"garbage"
    for body in (plain, truncated, trailing, b""):
        response = await client.post("/events", content=body, headers={"Content-Encoding": "gzip"})
        assert_error_body(response, 400)
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/xml"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json", "Content-Encoding": "br"},
        {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    ],
)
async def test_unsupported_media_type_is_415(
    client: AsyncTestClient[Any], db: asyncpg.Connection, headers: dict[str, str]
) -> None:
    response = await client.post("/events", content=json.dumps([ev("k")]).encode(), headers=headers)
    body = assert_error_body(response, 415)
    assert body["error"] == "unsupported_media_type"
    assert await count_events(db) == 0


# --- whole-body errors: 400, nothing stored -----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{not json",
        b'[{"event_name": "a", "user_id": "u"}',
        b'[{"event_name": "a", "user_id": "u", "idempotency_key": "k"}] trailing',
        b"5",
        b'"an event"',
        b"null",
        b"[]",
        b'[{"event_name": "a", "user_id": "u", "idempotency_key": "k"}, 1]',
        b'[{"event_name": "a", "user_id": "u", "idempotency_key": "k"}, [ ]]',
        b'{"events": 5}',
        b'{"events": null}',
        b'{"events": [{"event_name": "a", "user_id": "u", "idempotency_key": "k"}, "x"]}',
        b'{"events": []}',
    ],
)
async def test_body_that_is_not_events_is_400_and_stores_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection, body: bytes
) -> None:
    response = await client.post(
        "/events", content=body, headers={"Content-Type": "application/json"}
    )
    body_json = assert_error_body(response, 400)
    assert body_json["error"] == "malformed_body"
    assert await count_events(db) == 0


async def test_wrapped_with_other_fields_is_one_event_with_unknown_fields(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, {"events": [ev("k")], "extra": 1})
    assert response.status_code == 400, response.text
    assert response.json()["rejected"] == 1
    assert await count_events(db) == 0


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


# --- size limits ---------------------------------------------------------------------------


def padded_batch(size: int) -> bytes:
    """A JSON array of valid events, padded with whitespace to exactly `size` bytes."""
    body = json.dumps([ev("p1"), ev("p2")]).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def test_body_at_the_limit_is_accepted_and_over_it_is_413(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(max_body_bytes=1000) as client:
        over = await client.post(
            "/events", content=padded_batch(1001), headers={"Content-Type": "application/json"}
        )
        body = assert_error_body(over, 413)
        assert body["error"] == "body_too_large"
        assert await count_events(db) == 0
        at = await client.post(
            "/events", content=padded_batch(1000), headers={"Content-Type": "application/json"}
        )
        assert at.status_code == 200, at.text
        assert await stored_keys(db) == ["p1", "p2"]


async def test_body_over_the_limit_after_gunzip_is_413(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(max_body_bytes=1000) as client:
        compressed = gzip.compress(padded_batch(5000))
        assert len(compressed) < 1000
        response = await client.post(
            "/events",
            content=compressed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert_error_body(response, 413)
        at_limit = gzip.compress(padded_batch(1000))
        response = await client.post(
            "/events",
            content=at_limit,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text
    assert await stored_keys(db) == ["p1", "p2"]


async def test_gzip_bomb_is_413(make_client: ClientFactory, db: asyncpg.Connection) -> None:
    async with make_client(max_body_bytes=64 * 1024) as client:
        bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")
        response = await client.post("/events", content=bomb, headers={"Content-Encoding": "gzip"})
        assert_error_body(response, 413)
    assert await count_events(db) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
async def test_too_many_events_is_413(
    make_client: ClientFactory, db: asyncpg.Connection, content_type: str
) -> None:
    def encode(events: list[dict[str, Any]]) -> bytes:
        if content_type == "application/json":
            return json.dumps(events).encode()
        return "\n".join(json.dumps(e) for e in events).encode()

    async with make_client(max_batch_events=5) as client:
        headers = {"Content-Type": content_type}
        response = await client.post(
            "/events", content=encode([ev(f"k{i}") for i in range(6)]), headers=headers
        )
        body = assert_error_body(response, 413)
        assert body["error"] == "too_many_events"
        assert await count_events(db) == 0
        response = await client.post(
            "/events", content=encode([ev(f"k{i}") for i in range(5)]), headers=headers
        )
        assert response.status_code == 200, response.text
    assert await count_events(db) == 5


async def test_event_over_the_size_limit_is_rejected_alone(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    small = ev("small")
    big = ev("big", properties={"blob": "x" * 400})
    assert len(json.dumps(small)) < 300 < len(json.dumps(big))
    async with make_client(max_event_bytes=300) as client:
        response = await post(client, [small, big])
        assert response.status_code == 400, response.text
        assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected"]
        response = await client.post(
            "/events", content=json.dumps(big).encode() + b"\n", headers=NDJSON
        )
        assert response.status_code == 400, response.text
    assert await stored_keys(db) == ["small"]


# --- result listing ----------------------------------------------------------------------


async def test_results_list_every_event_up_to_100(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, [ev(f"k{i}") for i in range(100)])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 100
    assert body["results"] == [{"index": i, "status": "accepted"} for i in range(100)]


async def test_results_of_a_large_batch_list_only_events_not_accepted(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    await post(client, ev("k7"))
    events = [ev(f"k{i}") for i in range(1000)]
    events[3] = ev("k3", colour="red")
    events[500] = ev("k1")  # repeats event 1 in the same request
    response = await post(client, events)
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (997, 2, 1)
    assert [(r["index"], r["status"]) for r in body["results"]] == [
        (3, "rejected"),
        (7, "duplicate"),
        (500, "duplicate"),
    ]
    assert await count_events(db) == 998

    response = await post(client, [ev(f"fresh{i}") for i in range(101)])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 101
    assert response.json()["results"] == []


# --- wait=false, queue bound, shutdown ------------------------------------------------------


async def test_wait_false_is_202_then_stored(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, [ev("q1"), ev("q2")], params={"wait": "false"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["queued"] == 2
    assert [r["status"] for r in body["results"]] == ["queued", "queued"]

    async def stored() -> bool:
        return await count_events(db) == 2

    await wait_until(stored, what="queued events committed")
    assert sorted(await stored_keys(db)) == ["q1", "q2"]


async def test_wait_false_with_a_rejected_event(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, [ev("q1"), ev("bad", colour="red")], params={"wait": "false"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["queued"] == 1
    assert [r["status"] for r in body["results"]] == ["queued", "rejected"]

    async def stored() -> bool:
        return await stored_keys(db) == ["q1"]

    await wait_until(stored, what="the valid event committed")


async def test_invalid_wait_parameter_is_400(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    response = await post(client, ev("k"), params={"wait": "maybe"})
    body = assert_error_body(response, 400)
    assert body.get("parameter") == "wait"
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    ("value", "status"),
    [("false", 202), ("0", 202), ("FALSE", 202), ("true", 200), ("1", 200), ("True", 200),
     ("", 400), ("yes", 400), ("off", 400), ("n", 400)],
)  # fmt: skip
async def test_wait_parameter_values(
    client: AsyncTestClient[Any], db: asyncpg.Connection, value: str, status: int
) -> None:
    response = await post(client, ev(f"w{value}"), params={"wait": value})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["parameter"] == "wait"


async def test_a_repeated_wait_parameter_counts_its_last_value(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    # As Litestar read it when the parameter was declared.
    response = await post(client, ev("r1"), params=[("wait", "true"), ("wait", "false")])
    assert response.status_code == 202, response.text
    response = await post(client, ev("r2"), params=[("wait", "false"), ("wait", "maybe")])
    assert response.status_code == 400

    async def stored() -> bool:
        return await count_events(db) == 1

    await wait_until(stored, what="the queued event")
    assert await stored_keys(db) == ["r1"]


async def test_other_methods_on_events_are_405_with_allow(client: AsyncTestClient[Any]) -> None:
    # POST /events is a plain ASGI handler: it answers other methods as Litestar would.
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        response = await client.request(method, "/events")
        assert response.status_code == 405, (method, response.text)
        assert "POST" in response.headers["allow"]
        if method != "HEAD":
            assert response.json()["error"] == "http_error"
    options = await client.options("/events")
    assert options.status_code == 204
    assert options.headers["allow"] == "OPTIONS, POST"


async def lock_events(db: asyncpg.Connection) -> asyncpg.transaction.Transaction:
    """Stall every writer: INSERT into events waits until the returned transaction ends."""
    transaction = db.transaction()
    await transaction.start()
    await db.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    return transaction


async def health(client: AsyncTestClient[Any]) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_full_queue_is_503_and_enqueues_nothing_from_that_request(
    make_client: ClientFactory, db: asyncpg.Connection, database_url: str
) -> None:
    async with make_client(
        writer_count=1, queue_max_events=10, max_batch_events=10, batch_max_events=10,
        flush_interval_ms=0,
    ) as client:  # fmt: skip
        lock = await lock_events(db)
        try:
            # The one writer takes this batch and then waits on the lock.
            first = await post(client, [ev("a0"), ev("a1"), ev("a2")], params={"wait": "false"})
            assert first.status_code == 202, first.text

            async def writer_busy() -> bool:
                return (await health(client))["queue_depth"] == 0

            await wait_until(writer_busy, what="the writer to take the first batch")
            fill = await post(client, [ev(f"b{i}") for i in range(9)], params={"wait": "false"})
            assert fill.status_code == 202, fill.text
            over = await post(client, [ev("c0"), ev("c1")], params={"wait": "false"})
            body = assert_error_body(over, 503)
            assert body["error"] == "overloaded"
            assert int(over.headers["Retry-After"]) >= 1
            waiting = await post(client, [ev("d0"), ev("d1")])  # wait=true is refused as well
            assert_error_body(waiting, 503)
            last = await post(client, ev("b9"), params={"wait": "false"})
            assert last.status_code == 202, last.text  # exactly fills the queue
            assert_error_body(await post(client, ev("e0")), 503)
            state = await health(client)
            assert state["queue_depth"] == 10
            assert state["queue_capacity"] == 10
            assert state["oldest_queued_age_s"] >= 0
        finally:
            await lock.rollback()

        async def drained() -> bool:
            return await count_events(db) == 13

        await wait_until(drained, what="the queue to drain")
        assert (await health(client))["queue_depth"] == 0
        retry = await post(client, [ev("c0"), ev("c1")])
        assert retry.status_code == 200, retry.text
        assert retry.json()["accepted"] == 2
    keys = set(await stored_keys(db))
    assert keys == {"a0", "a1", "a2", "c0", "c1"} | {f"b{i}" for i in range(10)}


async def test_ack_timeout_is_503_and_the_events_still_land(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(ack_timeout_ms=200, flush_interval_ms=0) as client:
        lock = await lock_events(db)
        try:
            response = await post(client, [ev("t0"), ev("t1")])
            body = assert_error_body(response, 503)
            assert "Retry-After" in response.headers
            assert body["error"] == "storage_unavailable"
        finally:
            await lock.rollback()

        async def stored() -> bool:
            return await count_events(db) == 2

        await wait_until(stored, what="the timed-out events committed")
        retry = await post(client, [ev("t0"), ev("t1")])
        assert retry.json()["duplicates"] == 2, retry.text


async def test_shutdown_drains_the_queue(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    # Writers linger up to a minute for a full batch, so only shutdown can flush these.
    async with make_client(flush_interval_ms=60_000, batch_max_events=1000) as client:
        for n in range(5):
            response = await post(
                client, [ev(f"s{n}-{i}") for i in range(10)], params={"wait": "false"}
            )
            assert response.status_code == 202, response.text
        state = await health(client)
        assert state["queue_depth"] == 50
        assert await count_events(db) == 0
    assert await count_events(db) == 50


async def test_health(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    await post(client, [ev("h0"), ev("h1")])
    body = await health(client)
    assert body["status"] == "ok"
    assert body["queue_depth"] == 0
    assert body["oldest_queued_age_s"] == 0
    assert body["rows_written"] == 2
    assert body["postgres"].startswith("ok")


# --- durability -------------------------------------------------------------------------


async def test_acknowledged_events_survive_killed_connections(
    make_concurrent_client: ConcurrentClientFactory, db: asyncpg.Connection
) -> None:
    # One writer: if a connection failure killed it, every later request would time out.
    async with make_concurrent_client(
        writer_count=1, retry_initial_ms=5, retry_max_ms=50, flush_interval_ms=1
    ) as client:
        done = asyncio.Event()

        async def kill_connections() -> int:
            # Kill every app connection each time a commit lands: the writers are hit over
            # and over while requests are in flight, yet can always make progress.
            kills = 0
            seen = -1
            while not done.is_set():
                stored = await count_events(db)
                if stored != seen:
                    seen = stored
                    kills += await db.fetchval(
                        "SELECT count(*) FROM ("
                        " SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()) t"
                    )
                await asyncio.sleep(0.005)
            return kills

        async def send(n: int) -> tuple[list[str], Any]:
            keys = [f"r{n}-{i}" for i in range(20)]
            return keys, await post(client, [ev(k) for k in keys])

        killer = asyncio.create_task(kill_connections())
        try:
            outcomes: list[tuple[list[str], Any]] = []
            for wave in range(5):
                outcomes += await asyncio.gather(*(send(wave * 10 + n) for n in range(10)))
        finally:
            done.set()
            kills = await killer
        assert kills > 0
        for _, response in outcomes:
            assert response.status_code == 200, response.text
            # A commit whose reply was lost is retried and then reports "duplicate".
            assert {r["status"] for r in response.json()["results"]} <= {"accepted", "duplicate"}
        acknowledged = {key for keys, _ in outcomes for key in keys}
        assert set(await stored_keys(db)) == acknowledged
        response = await post(client, [ev("after")])
        assert response.status_code == 200, response.text


async def test_openapi_lists_the_endpoints(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    paths = response.json()["paths"]
    assert "post" in paths["/events"]
    assert "get" in paths["/health"]
    params = {p["name"] for p in paths["/metrics"]["get"]["parameters"]}
    assert {"from", "to", "granularity", "group_by", "timezone", "event_name"} <= params


async def test_openapi_describes_the_event_body_and_errors(client: AsyncTestClient[Any]) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    ingest = paths["/events"]["post"]
    body = ingest["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(body)
    event = body["application/json"]["schema"]["oneOf"][0]
    assert event["required"] == ["event_name", "user_id"]
    assert event["additionalProperties"] is False
    assert {"timestamp", "idempotency_key", "channel", "properties", "sent_at"} <= set(
        event["properties"]
    )
    assert {"200", "202", "400", "413", "415", "503"} <= set(ingest["responses"])
    assert ingest["security"] == [{"writeKey": []}, {"writeKeyBasic": []}]
    (wait,) = ingest["parameters"]
    assert (wait["name"], wait["in"], wait["schema"]["type"]) == ("wait", "query", "boolean")
    required = {p["name"]: p.get("required") for p in paths["/metrics"]["get"]["parameters"]}
    assert required["from"] is True and required["to"] is True
    assert {"backend", "plan"} <= set(required)


@pytest.mark.parametrize("path", ["copy", "unnest"])
async def test_times_are_stored_to_the_microsecond(db: asyncpg.Connection, path: str) -> None:
    # The writers send times as integer microseconds since 1970; PostgreSQL turns them
    # back into timestamptz. Edges: the epoch, before it (a negative remainder), the
    # microsecond below a second, year 9999 (beyond float8's exact microseconds), an
    # offset other than UTC, and rows sharing one received_at object or having their own.
    plus_five = timezone(timedelta(hours=5, minutes=30))
    shared = datetime(2026, 11, 30, 6, 0, 0, 123_456, tzinfo=UTC)
    times = [
        (shared, shared),
        (datetime(1970, 1, 1, tzinfo=UTC), shared),
        (datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC), shared),
        (datetime(2000, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), shared),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), shared),
        (datetime(2026, 3, 1, 4, 59, 59, 1, tzinfo=plus_five), shared),
        (shared, datetime(2026, 11, 30, 6, 0, 0, 123_457, tzinfo=UTC)),
        (datetime(1, 1, 1, 5, 30, tzinfo=plus_five), datetime(1970, 1, 1, tzinfo=plus_five)),
    ]
    rows = [
        Row(
            project_id=1,
            idempotency_key=f"times-{n}",
            event_name="e",
            user_id="u",
            channel="",
            ts=ts,
            received_at=received,
            properties=None,
        )
        for n, (ts, received) in enumerate(times)
    ]
    await init_writer_connection(db)
    write = write_copy if path == "copy" else write_unnest
    await write(db, rows)
    stored = {
        r["idempotency_key"]: (r["ts"], r["received_at"])
        for r in await db.fetch("SELECT idempotency_key, ts, received_at FROM events")
    }
    assert stored == {row.idempotency_key: (row.ts, row.received_at) for row in rows}
