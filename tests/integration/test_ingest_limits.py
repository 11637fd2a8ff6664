"""POST /events at its limits: body and event sizes, events per request, and how many
results an answer lists."""

from __future__ import annotations

import gzip
import json
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from posting import NDJSON, assert_error_body, count_events, ev, post

from conftest import ClientFactory, stored_keys

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
