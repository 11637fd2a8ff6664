"""An acknowledgement means committed: SIGKILL the service in the middle of a stream of
requests, or kill the writers' connections, and every event that got its 200 is in
PostgreSQL, with its times to the microsecond."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest
from posting import count_events, ev, post

from conftest import (
    ConcurrentClientFactory,
    Keys,
    LiveServer,
    stored_keys,
    wait_until,
)
from event_metrics.writer import init_writer_connection, write_copy, write_unnest
from rows import row

SENDERS = 32


async def test_every_acknowledged_event_survives_sigkill(
    database_url: str, db: asyncpg.Connection, keys: Keys
) -> None:
    server = LiveServer(database_url, replicate="false")
    server.start()
    acknowledged: set[str] = set()
    sent: set[str] = set()

    async def sender(n: int) -> None:
        rng = random.Random(n)
        async with httpx.AsyncClient(
            base_url=server.url, headers=keys.default.auth(), timeout=5
        ) as client:
            for request in range(1_000_000):
                batch = [f"k{n}-{request}-{i}" for i in range(rng.choice((1, 1, 1, 5, 20)))]
                events = [{"event_name": "kill", "user_id": "u", "idempotency_key": k}
                          for k in batch]  # fmt: skip
                sent.update(batch)
                try:
                    response = await client.post("/events", json=events)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    acknowledged.update(batch)

    senders = [asyncio.create_task(sender(n)) for n in range(SENDERS)]
    try:

        async def enough() -> bool:
            return len(acknowledged) >= 3000

        await wait_until(enough, what="3000 events acknowledged")
        assert server.process is not None
        server.process.kill()  # SIGKILL: no drain, no goodbye
        await asyncio.to_thread(server.process.wait)
        await asyncio.gather(*senders)
    finally:
        for task in senders:
            task.cancel()
        server.stop()
    stored = {r["idempotency_key"] for r in await db.fetch("SELECT idempotency_key FROM events")}
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:5]}"
    assert stored <= sent  # nothing stored that was not sent
    assert len(sent) > len(acknowledged)  # requests were in flight when it died


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
    rows = [row(f"times-{n}", ts, received) for n, (ts, received) in enumerate(times)]
    await init_writer_connection(db)
    write = write_copy if path == "copy" else write_unnest
    await write(db, rows)
    stored = {
        r["idempotency_key"]: (r["ts"], r["received_at"])
        for r in await db.fetch("SELECT idempotency_key, ts, received_at FROM events")
    }
    assert stored == {row.idempotency_key: (row.ts, row.received_at) for row in rows}
