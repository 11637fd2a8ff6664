"""The lag that /health, the gauges and /metrics answers report is true at every moment:
never 0 and never `running` while the mirror or the rollups miss rows, falling as rows
arrive, rising during an outage, and measured all along (issue #27).

These run `event-metrics serve` as users do: the replicator in its child process, its
status read from the file it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clickhouse_driver import Client
from test_telemetry import samples, value
from throwaway.clickhouse import ClickHouseServer, find_binary

from conftest import Keys, LiveServer, live_server, unavailable, wait_until
from event_metrics import lag
from event_metrics.checkpoint import START
from event_metrics.schema import DAY, level_for

SEEDED = 2_000_000
POLL_S = 0.25
SEED_START = "2026-11-01T00:00:00Z"  # one event per second from here
WINDOW = {"from": "2026-10-31T00:00:00Z", "to": "2026-11-25T00:00:00Z"}  # all of them

# Like bench.seed (without its numpy dependencies): the table emptied, its indexes dropped,
# the rows inserted and the indexes built again, in one transaction. Inserting 2M rows
# into the indexed table took twice as long.
INDEXES = """
SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), c.conname,
       pg_get_constraintdef(c.oid)
FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid
WHERE i.indrelid = 'events'::regclass
"""
SEED = """
INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts, received_at)
SELECT $1, 'seed-' || lpad(g::text, 8, '0'), 'e' || (g % 20), 'u' || (g % 50000),
       CASE WHEN g % 3 = 0 THEN 'ios' ELSE 'web' END,
       timestamptz '2026-11-01T00:00:00Z' + g * interval '1 second',
       now() - interval '1 minute'
FROM generate_series(1, $2::bigint) g
"""
FOLDED = f"SELECT coalesce(sum(events), 0) FROM rollups WHERE grain = {DAY} AND level = $1"


async def seed(db: asyncpg.Connection, project_id: int, rows: int) -> None:
    """`rows` events in one transaction, as a bulk load would put them (one txid)."""
    async with db.transaction():
        indexes = await db.fetch(INDEXES)
        await db.execute("TRUNCATE events")
        for name, _, constraint, _ in indexes:
            if constraint:
                await db.execute(f'ALTER TABLE events DROP CONSTRAINT "{constraint}"')
            else:
                await db.execute(f"DROP INDEX {name}")
        await db.execute(SEED, project_id, rows)
        for _, definition, constraint, constraint_definition in indexes:
            if constraint:
                await db.execute(
                    f'ALTER TABLE events ADD CONSTRAINT "{constraint}" {constraint_definition}'
                )
            else:
                await db.execute(definition)
    await db.execute("ANALYZE events")


def clickhouse_count(url: str) -> int:
    client = Client.from_url(url)
    try:
        if not client.execute("EXISTS TABLE events")[0][0]:
            return 0
        # Each row once: a re-sent block would count twice in count().
        return int(client.execute("SELECT uniqExact(id) FROM events")[0][0])
    finally:
        client.disconnect()


# A checksum of the set of keys both engines compute alike: a count and two sums of
# 32-bit slices of md5(key) (FINAL: each key once, whatever was sent twice).
POSTGRES_KEYS = """
SELECT count(*), sum(('x' || substr(md5(idempotency_key), 1, 8))::bit(32)::bigint),
       sum(('x' || substr(md5(idempotency_key), 9, 8))::bit(32)::bigint)
FROM events
"""
CLICKHOUSE_KEYS = """
SELECT count(), sum(reinterpretAsUInt32(reverse(substring(MD5(idempotency_key), 1, 4)))),
       sum(reinterpretAsUInt32(reverse(substring(MD5(idempotency_key), 5, 4))))
FROM events FINAL
"""


def clickhouse_checksum(url: str) -> tuple[int, int, int]:
    client = Client.from_url(url)
    try:
        count, first, second = client.execute(CLICKHOUSE_KEYS)[0]
        return int(count), int(first), int(second)
    finally:
        client.disconnect()


async def postgres_checksum(db: asyncpg.Connection) -> tuple[int, int, int]:
    count, first, second = await db.fetchrow(POSTGRES_KEYS)
    return int(count), int(first), int(second)


@dataclass
class Poll:
    """One look at the service: /health, then the copies, in that order (so a lag the
    service reported was measured before the copies were counted)."""

    at: float
    health: dict[str, Any]
    mirrored: int
    folded: int

    def part(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.health[name]
        return found

    def measured_at(self, name: str) -> float | None:
        age = self.part(name)["lag_age_s"]
        return None if age is None else self.at - age


@dataclass
class Seen:
    polls: list[Poll] = field(default_factory=list)

    def measurements(self, name: str) -> list[tuple[float, int]]:
        """(time, lag_rows) of each distinct measurement the polls showed, in order."""
        found: list[tuple[float, int]] = []
        for poll in self.polls:
            at, rows = poll.measured_at(name), poll.part(name)["lag_rows"]
            if at is None or rows is None:
                continue
            if not found or at - found[-1][0] > 0.05:  # 50 ms: the same one read twice
                found.append((at, rows))
        return found

    def states(self, name: str) -> set[str]:
        return {poll.part(name)["state"] for poll in self.polls}


async def ask(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    """A /metrics answer over every seeded event."""
    answer = await client.get("/metrics", params={**WINDOW, **params}, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def get_health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_catch_up_of_2m_rows_is_reported_truly_until_the_last_row(
    database_url: str, db: asyncpg.Connection, keys: Keys, clickhouse_url: str
) -> None:
    await seed(db, keys.default.project_id, SEEDED)
    no_dimensions = level_for(set()).number
    seen = Seen()
    scrapes: list[dict[Any, float]] = []
    mirror_answers: list[asyncio.Task[dict[str, Any]]] = []
    rollup_answers: list[asyncio.Task[dict[str, Any]]] = []
    read = {"Authorization": f"Bearer {keys.default.read}"}
    with live_server(database_url, clickhouse_url=clickhouse_url) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            deadline = time.monotonic() + 600
            while True:
                health = await get_health(client)
                poll = Poll(
                    time.time(),
                    health,
                    await asyncio.to_thread(clickhouse_count, clickhouse_url),
                    await db.fetchval(FOLDED, no_dimensions),
                )
                seen.polls.append(poll)
                replication, rollups = poll.part("replication"), poll.part("rollups")
                # Never "caught up" before it is: while ClickHouse misses rows, the lag
                # is not 0 (null before the first measurement) and the state not running.
                if poll.mirrored < SEEDED:
                    assert replication["lag_rows"] != 0, replication
                    assert replication["state"] != "running", replication
                if poll.folded < SEEDED:
                    assert rollups["lag_rows"] != 0, rollups
                    assert rollups["state"] != "running", rollups
                # Catching up is not a failure: only a failing follower makes the service
                # degraded (on a loaded machine the child may take more than 10 s to
                # report first, which /health rightly calls failing).
                failing = "failing" in (replication["state"], rollups["state"])
                assert health["status"] == ("degraded" if failing else "ok"), poll
                if len(seen.polls) % 8 == 0:
                    scraped = await client.get("/internal/metrics")
                    scrapes.append(samples(scraped.text))
                # Answers are asked for beside the polls, which go on meanwhile; one at a
                # time (METRICS_MAX_RUNNING is 1).
                idle = all(task.done() for task in (*mirror_answers, *rollup_answers))
                if idle and replication["state"] == "catching_up" and len(mirror_answers) < 2:
                    mirror_answers.append(
                        asyncio.create_task(ask(client, {"backend": "clickhouse"}, read))
                    )
                elif idle and rollups["state"] == "catching_up" and not rollup_answers:
                    rollup_answers.append(
                        asyncio.create_task(ask(client, {"plan": "rollup"}, read))
                    )
                done = (
                    poll.mirrored == SEEDED
                    and poll.folded == SEEDED
                    and (replication["state"], replication["lag_rows"]) == ("running", 0)
                    and (rollups["state"], rollups["lag_rows"]) == ("running", 0)
                )
                if done:
                    break
                assert time.monotonic() < deadline, f"no catch-up in 600 s: {health}"
                await asyncio.sleep(POLL_S)
            answered = [await task for task in mirror_answers]
            (rollup_body,) = [await task for task in rollup_answers]
            final = await client.get("/internal/metrics")
            final_answer = await client.get(
                "/metrics", params={**WINDOW, "backend": "clickhouse"}, headers=read
            )

    assert any(
        p.health["status"] == "ok" and p.part("replication")["state"] == "catching_up"
        for p in seen.polls
    ), "never ok while catching up"
    for name in ("replication", "rollups"):
        # It said so while it worked through the backlog, with its rate and a time to go.
        assert "catching_up" in seen.states(name), (name, seen.states(name))
        working = [p.part(name) for p in seen.polls if p.part(name)["state"] == "catching_up"]
        assert any(part["rows_per_second"] > 0 for part in working), name
        assert any(part["eta_seconds"] is not None for part in working), name
        # The lag fell as the rows arrived, measured over and over (no new rows came).
        measured = [rows for _, rows in seen.measurements(name)]
        assert measured[0] > 0 and measured[-1] == 0, (name, measured)
        assert measured == sorted(measured, reverse=True), (name, measured)
        assert len({rows for rows in measured if rows}) >= 3, (name, measured)
        # Measured at least every ~2 s (every second, reported every second) throughout.
        times = [at for at, _ in seen.measurements(name)]
        assert max(b - a for a, b in itertools.pairwise(times)) < 3.0, (name, times)

    # A ClickHouse answer during the catch-up says how far behind it is, and truly: of the
    # events committed by `as_of`, it lacks at most `lag_rows`.
    assert answered, "no /metrics answer was taken during the catch-up"
    for body in answered:
        freshness = body["freshness"]
        assert freshness["source"] == "clickhouse"
        assert freshness["lag_rows"] and freshness["lag_rows"] > 0, freshness
        assert freshness["state"] in {"starting", "catching_up"}, freshness
        assert body["total"]["events"] >= SEEDED - freshness["lag_rows"], body
        assert body["total"]["events"] < SEEDED, body  # it was partial, and said so
        assert freshness["age_s"] is not None and freshness["age_s"] < 5, freshness
    # Rollup answers are complete while the refresher catches up: what is not folded yet
    # is read raw, and said to be.
    assert rollup_body["total"]["events"] == SEEDED
    assert rollup_body["freshness"]["lag_rows"] == 0
    assert rollup_body["freshness"]["rollup_lag_rows"] > 0
    assert final_answer.json()["total"]["events"] == SEEDED

    # The gauges followed: catching up with a rate and a lag, then running with none.
    assert any(
        value(s, "event_metrics_loop_state", loop="replicator", state="catching_up") == 1
        and value(s, "event_metrics_lag_rows", loop="replicator") > 0
        for s in scrapes
    ), "no scrape saw the replicator catching up"
    assert any(
        value(s, "event_metrics_follower_rows_per_second", loop="rollup_refresher") > 0
        for s in scrapes
    )
    ended = samples(final.text)
    assert value(ended, "event_metrics_loop_state", loop="replicator", state="running") == 1
    assert value(ended, "event_metrics_lag_rows", loop="replicator") == 0
    assert value(ended, "event_metrics_lag_rows", loop="rollup_refresher") == 0
    assert clickhouse_checksum(clickhouse_url) == await postgres_checksum(db)


@contextlib.asynccontextmanager
async def steady_load(server: LiveServer, keys: Keys, per_s: int) -> AsyncIterator[list[str]]:
    """Events posted in batches of a tenth of `per_s` every 100 ms until the block ends."""
    sent: list[str] = []
    stop = asyncio.Event()

    async def post() -> None:
        async with httpx.AsyncClient(
            base_url=server.url, headers=keys.default.auth(), timeout=30
        ) as client:
            while not stop.is_set():
                batch = [f"load-{uuid.uuid4().hex}" for _ in range(per_s // 10)]
                body = [{"event_name": "load", "user_id": "u", "idempotency_key": key}
                        for key in batch]  # fmt: skip
                response = await client.post("/events", json=body)
                assert response.status_code == 200, response.text
                sent.extend(batch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)

    task = asyncio.create_task(post())
    try:
        yield sent
    finally:
        stop.set()
        await task


@pytest.fixture
def own_clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A ClickHouse server of this test's own, to stop and start again."""
    if find_binary() is None:
        unavailable("clickhouse-server is not installed (make test installs it on Debian)")
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_lag_rises_during_an_outage_and_falls_after_it_never_frozen(
    database_url: str, db: asyncpg.Connection, keys: Keys, own_clickhouse: ClickHouseServer
) -> None:
    url = own_clickhouse.url
    seen = Seen()

    async def look(client: httpx.AsyncClient) -> Poll:
        poll = Poll(time.time(), await get_health(client), 0, 0)
        seen.polls.append(poll)
        return poll

    # The default REPLICATION_RETRY_MAX_MS (5 s): the lag must be measured more often than
    # the loop retries.
    with live_server(database_url, clickhouse_url=url, rollups="false") as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            steady_load(server, keys, per_s=1000) as sent,
        ):

            async def running() -> bool:
                return bool((await look(client)).part("replication")["state"] == "running")

            await wait_until(running, timeout_s=60, what="replication running under load")
            own_clickhouse.stop()
            outage_started = time.time()

            async def failing() -> bool:
                part = (await look(client)).part("replication")
                await asyncio.sleep(POLL_S)
                return bool(part["state"] == "failing")

            await wait_until(failing, timeout_s=30, what="the replicator failing")
            outage_seen = time.time()
            while time.time() - outage_seen < 4:  # a few seconds of outage, under load
                poll = await look(client)
                assert poll.part("replication")["state"] == "failing", poll.health
                await asyncio.sleep(POLL_S)
            own_clickhouse.start()
            outage_ended = time.time()

            async def caught_up() -> bool:
                part = (await look(client)).part("replication")
                await asyncio.sleep(POLL_S)
                return bool(part["state"] == "running" and part["lag_rows"] < 1000)

            await wait_until(caught_up, timeout_s=120, what="the mirror caught up again")
        # The load has stopped: everything arrives, nothing lost or doubled.
        await wait_until(
            lambda: clickhouse_count(url) == len(sent), timeout_s=60, what="all rows copied"
        )

    assert clickhouse_checksum(url) == await postgres_checksum(db)
    measured = seen.measurements("replication")
    during = [(at, rows) for at, rows in measured if outage_seen <= at <= outage_ended]
    after = [(at, rows) for at, rows in measured if at > outage_ended]
    # During the outage the lag kept being measured, and rose with every measurement
    # (events kept arriving, none were copied): never frozen.
    assert len(during) >= 3, measured
    assert all(b[1] > a[1] for a, b in itertools.pairwise(during)), during
    times = [at for at, _ in measured if at >= outage_started]
    assert max(b - a for a, b in itertools.pairwise(times)) < 3.0, times
    # After it, the lag fell from its peak as the replicator worked through the backlog.
    peak = max(rows for _, rows in during)
    assert after and min(rows for _, rows in after) < peak / 4, after


async def test_beyond_the_exact_count_the_lag_is_estimated_and_says_so(
    db: asyncpg.Connection, keys: Keys
) -> None:
    await seed(db, keys.default.project_id, 5_000)
    exact = await lag.measure(db, START, exact_rows=10_000)
    assert (exact.rows, exact.capped) == (5_000, False)
    assert 55 < exact.seconds < 600  # received a minute ago
    estimated = await lag.measure(db, START, exact_rows=100)
    assert estimated.capped
    assert estimated.rows == 5_000  # ids are dense here: the estimate is exact
    checkpoint = await db.fetchrow("SELECT txid::text, id FROM events ORDER BY id OFFSET 4999")
    done = await lag.measure(db, (checkpoint[0], checkpoint[1]), exact_rows=100)
    assert (done.rows, done.capped, done.seconds) == (0, False, 0.0)
