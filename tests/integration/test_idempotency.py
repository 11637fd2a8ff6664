"""An idempotency key is stored once, however often and however concurrently it arrives."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import asyncpg
import pytest

from conftest import ClientFactory, ConcurrentClientFactory, stored_keys


def ev(key: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_name": "signup", "user_id": "u1", "idempotency_key": key}
    event.update(fields)
    return event


async def post(client: Any, body: Any, **kwargs: Any) -> Any:
    return await client.post("/events", content=json.dumps(body).encode(), **kwargs)


async def stored_rows(db: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT idempotency_key, event_name, user_id FROM events")
    return {row["idempotency_key"]: row for row in rows}


@pytest.mark.parametrize("copy_min_rows", [1, 10_000], ids=["copy", "unnest"])
async def test_same_key_twice_in_one_request(
    make_client: ClientFactory, db: asyncpg.Connection, copy_min_rows: int
) -> None:
    # Both write paths (COPY + INSERT for large batches, unnest for small) must agree.
    async with make_client(copy_min_rows=copy_min_rows) as client:
        response = await post(
            client, [ev("k1", event_name="first"), ev("k2"), ev("k1", event_name="second")]
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 2,
        "duplicates": 1,
        "rejected": 0,
        "results": [
            {"index": 0, "status": "accepted"},
            {"index": 1, "status": "accepted"},
            {"index": 2, "status": "duplicate"},
        ],
    }
    rows = await stored_rows(db)
    assert sorted(rows) == ["k1", "k2"]
    assert rows["k1"]["event_name"] == "first"  # the first occurrence is the one stored


@pytest.mark.parametrize("copy_min_rows", [1, 10_000], ids=["copy", "unnest"])
async def test_same_key_across_requests(
    make_client: ClientFactory, db: asyncpg.Connection, copy_min_rows: int
) -> None:
    # The COPY path learns which rows were new from the command's row count, and reads
    # the stored keys back only when it is short: here, two of three are not new.
    async with make_client(copy_min_rows=copy_min_rows) as client:
        first = await post(client, [ev("k1"), ev("k2")])
        assert first.json()["accepted"] == 2, first.text
        # A retry whose content differs is still the same event: the key decides.
        second = await post(client, [ev("k2", user_id="someone-else"), ev("k3"), ev("k1")])
        # /health counts rows stored, not rows sent.
        assert (await client.get("/health")).json()["rows_written"] == 3
    assert second.status_code == 200, second.text
    assert second.json() == {
        "accepted": 1,
        "duplicates": 2,
        "rejected": 0,
        "results": [
            {"index": 0, "status": "duplicate"},
            {"index": 1, "status": "accepted"},
            {"index": 2, "status": "duplicate"},
        ],
    }
    rows = await stored_rows(db)
    assert sorted(rows) == ["k1", "k2", "k3"]
    assert rows["k2"]["user_id"] == "u1"


async def test_same_key_in_two_requests_committed_in_one_batch(
    make_concurrent_client: ConcurrentClientFactory, db: asyncpg.Connection
) -> None:
    # One writer that waits (up to a minute) for four events: both requests land in one
    # transaction, so the duplicate is found inside the batch, not by an earlier commit.
    async with make_concurrent_client(
        writer_count=1, batch_max_events=4, flush_interval_ms=60_000
    ) as client:
        a, b = await asyncio.gather(
            post(client, [ev("shared"), ev("only-a")]),
            post(client, [ev("only-b"), ev("shared")]),
        )
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    statuses = [r["status"] for r in a.json()["results"] + b.json()["results"]]
    assert sorted(statuses) == ["accepted", "accepted", "accepted", "duplicate"]
    assert a.json()["accepted"] + b.json()["accepted"] == 3
    assert sorted(await stored_keys(db)) == ["only-a", "only-b", "shared"]


async def test_concurrent_requests_store_each_key_once(
    make_concurrent_client: ConcurrentClientFactory, db: asyncpg.Connection
) -> None:
    rng = random.Random(20261101)
    keys = [f"key-{n}" for n in range(150)]
    # 40 requests, each a random overlapping sample (in random order, so concurrent
    # transactions lock keys in different orders), some repeating a key inside the request.
    bodies = []
    for _ in range(40):
        sample = rng.sample(keys, rng.randint(1, 60))
        sample += rng.sample(sample, min(len(sample), rng.randint(0, 3)))
        rng.shuffle(sample)
        bodies.append([ev(k) for k in sample])
    async with make_concurrent_client(writer_count=4, flush_interval_ms=0) as client:
        responses = await asyncio.gather(*(post(client, body) for body in bodies))
    sent = {event["idempotency_key"] for body in bodies for event in body}
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["accepted"] + result["duplicates"] == len(body)
        assert len(result["results"]) == len(body)
    assert sum(r.json()["accepted"] for r in responses) == len(sent)
    # Which request won a key: exactly one accepted occurrence per key, over all requests.
    winners: dict[str, int] = {}
    for body, response in zip(bodies, responses, strict=True):
        for item in response.json()["results"]:
            if item["status"] == "accepted":
                key = body[item["index"]]["idempotency_key"]
                winners[key] = winners.get(key, 0) + 1
    assert winners == dict.fromkeys(sent, 1)
    stored = await stored_keys(db)
    assert sorted(stored) == sorted(sent)


async def test_identical_concurrent_retries(
    make_concurrent_client: ConcurrentClientFactory, db: asyncpg.Connection
) -> None:
    # The same request sent 25 times at once, with derived keys (timestamp given, no key).
    body = [
        {"event_name": "click", "user_id": f"u{n}", "timestamp": "2026-11-01T10:00:00Z"}
        for n in range(10)
    ]
    async with make_concurrent_client(flush_interval_ms=0) as client:
        responses = await asyncio.gather(*(post(client, body) for _ in range(25)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert sum(r.json()["accepted"] for r in responses) == 10
        assert sum(r.json()["duplicates"] for r in responses) == 240
        assert len(await stored_keys(db)) == 10
        # The same again, later: all duplicates.
        again = await post(client, body)
        assert again.json()["duplicates"] == 10, again.text


async def test_wait_false_requests_are_deduplicated_too(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client() as client:
        for _ in range(5):
            response = await post(client, [ev("q1"), ev("q2")], params={"wait": "false"})
            assert response.status_code == 202, response.text
    # Leaving the client drained the queue.
    assert sorted(await stored_keys(db)) == ["q1", "q2"]
