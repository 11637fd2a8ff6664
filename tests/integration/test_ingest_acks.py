"""When POST /events answers: after the commit, or at once with ?wait=false; a full
queue, an ack timeout, a shutdown; /health meanwhile; the methods it takes."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from posting import assert_error_body, count_events, ev, post

from conftest import ClientFactory, stored_keys, wait_until

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
