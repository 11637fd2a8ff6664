"""POST /events against the real app and PostgreSQL: the bodies it takes (shapes,
content types, encodings), whole-body errors, and how OpenAPI describes them."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from posting import NDJSON, assert_error_body, count_events, ev, post

from conftest import stored_keys
from event_metrics.payload import MalformedPayload, PayloadTooLarge, read_body

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
