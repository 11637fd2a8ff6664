"""Rollups answer exactly what the raw table answers, at every stage of folding."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from pyroaring import BitMap
from test_backends import post_all

from conftest import ClientFactory, wait_until
from event_metrics.rollups import REFRESHER_LOCK_ID, rebuild, refresh_block


@pytest.fixture
async def parked(db: asyncpg.Connection) -> asyncpg.Connection:
    """Hold the refresher's lock, so the app's refresher waits in standby: the test folds."""
    await db.execute("SELECT pg_advisory_lock($1)", REFRESHER_LOCK_ID)
    return db


WINDOWS = [
    ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z"),  # whole UTC days
    ("2026-10-27T10:17:31+02:00", "2026-11-03T03:00:01Z"),  # starts and ends mid-hour
    ("2026-11-01T04:00:00Z", "2026-11-01T07:00:00Z"),  # around the New York fall-back
]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"]
SHAPES = list(
    itertools.product(
        ["hour", "day", "week", "month", "total"],
        ["", "channel", "event_name", "channel,event_name"],
    )
)


def random_events(seed: int, count: int) -> list[dict[str, Any]]:
    """Events over two weeks around DST changes, with retries, late and sub-second times."""
    rng = random.Random(seed)
    base = datetime(2026, 10, 24, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for n in range(count):
        moment = base + timedelta(
            seconds=rng.randrange(16 * 86400), microseconds=rng.randrange(10**6)
        )
        event: dict[str, Any] = {
            "event_name": rng.choice(["product_view", "page_view", "purchase"]),
            "user_id": f"user-{int(rng.paretovariate(1.1)) % 200}",
            "timestamp": moment.isoformat(),
            "idempotency_key": f"r{seed}-{n}",
        }
        if rng.random() < 0.8:
            event["channel"] = rng.choice(["web", "ios", "email"])
        events.append(event)
    events += [dict(e) for e in rng.sample(events, count // 8)]  # client retries
    rng.shuffle(events)
    return events


async def fold(db: asyncpg.Connection, max_rows: int) -> int:
    """Fold one block, waiting while another transaction on the cluster holds the horizon."""
    folded = 0

    async def some() -> bool:
        nonlocal folded
        folded = await refresh_block(db, max_rows=max_rows)
        return folded > 0

    await wait_until(some, what="a block to fold")
    return folded


async def fold_all(db: asyncpg.Connection) -> None:
    """Fold until no event is left after the checkpoint."""

    async def done() -> bool:
        while await refresh_block(db, max_rows=1000):
            pass
        pending: int = await db.fetchval(
            "SELECT count(*) FROM events e LEFT JOIN replication_state s "
            "ON s.target = 'rollups' WHERE s.target IS NULL "
            "OR (e.txid, e.id) > (s.txid, s.last_id)"
        )
        return pending == 0

    await wait_until(done, what="every event folded")


async def answers(client: AsyncTestClient[Any], params: dict[str, str]) -> list[dict[str, Any]]:
    """The same query through the raw table and through the rollups."""
    out = []
    for plan in ("raw", "rollup"):
        response = await client.get("/metrics", params={**params, "plan": plan})
        assert response.status_code == 200, response.text
        assert response.headers["x-metrics-plan"] == plan
        body = response.json()
        # PostgreSQL answers are complete whatever the refresher's progress.
        freshness = body.pop("freshness")
        assert (freshness["source"], freshness["lag_rows"]) == (plan, 0)
        out.append(body)
    return out


async def assert_plans_agree(client: AsyncTestClient[Any], rng: random.Random) -> None:
    for (start, end), (granularity, group_by) in itertools.product(WINDOWS, SHAPES):
        params = {
            "from": start,
            "to": end,
            "granularity": granularity,
            "group_by": group_by,
            "timezone": rng.choice(ZONES),
        }
        if rng.random() < 0.3:
            params["event_name"] = "product_view"
        raw, rollup = await answers(client, params)
        assert raw == rollup, params


async def test_rollups_equal_raw_while_folding(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection
) -> None:
    rng = random.Random(3)
    async with make_client() as client:
        await post_all(client, random_events(seed=3, count=900)[:600])
        await assert_plans_agree(client, rng)  # nothing folded: all rows pending
        assert await fold(db, max_rows=250) == 250
        await assert_plans_agree(client, rng)  # part folded, part pending
        await fold_all(db)
        await assert_plans_agree(client, rng)  # everything folded
        # Late events and retries after folding: only the touched buckets change.
        await post_all(client, random_events(seed=3, count=900)[500:])
        await assert_plans_agree(client, rng)
        await fold_all(db)
        await assert_plans_agree(client, rng)


# Covers whose rollup rows are the series rows as they are (see test_rollup_cover.py),
# plus London's 25-hour day clipped to one UTC day, which must not be read that way.
DIRECT_CASES = [
    ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "hour", "UTC"),
    ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "hour", "America/New_York"),
    ("2026-10-24T00:00:00Z", "2026-11-09T00:00:00Z", "day", "UTC"),
    ("2026-10-30T05:00:00Z", "2026-11-02T09:00:00Z", "hour", "America/New_York"),
    ("2026-10-25T00:00:00Z", "2026-10-30T00:00:00Z", "day", "Europe/London"),
]


async def assert_direct_plans_agree(client: AsyncTestClient[Any]) -> None:
    for (start, end, granularity, zone), group_by, event_name in itertools.product(
        DIRECT_CASES, ["", "channel", "event_name", "channel,event_name"], [None, "purchase"]
    ):
        params = {
            "from": start,
            "to": end,
            "granularity": granularity,
            "group_by": group_by,
            "timezone": zone,
        }
        if event_name:
            params["event_name"] = event_name
        raw, rollup = await answers(client, params)
        assert raw == rollup, params
        assert raw["series"], params


async def test_direct_plans_equal_raw_while_folding(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection
) -> None:
    """Series read straight from rollup rows, while pending rows touch some buckets."""
    async with make_client() as client:
        events = random_events(seed=11, count=800)
        await post_all(client, events[:500])
        await assert_direct_plans_agree(client)  # every bucket touched by pending rows
        await fold(db, max_rows=300)
        await assert_direct_plans_agree(client)  # some buckets folded, some touched
        await fold_all(db)
        await assert_direct_plans_agree(client)  # no pending rows: rows as they are
        await post_all(client, events[450:])  # late events and retries into folded hours
        await assert_direct_plans_agree(client)


async def rollup_contents(db: asyncpg.Connection) -> dict[tuple[Any, ...], tuple[int, list[int]]]:
    rows = await db.fetch(
        "SELECT grain, level, bucket, event_name, channel, events, users FROM rollups"
    )
    return {tuple(r[:5]): (r[5], list(BitMap.deserialize(r[6]))) for r in rows}


async def test_rebuild_gives_the_same_rollups(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection
) -> None:
    async with make_client() as client:
        events = random_events(seed=5, count=500)
        for start in range(0, len(events), 100):  # folded in several small blocks
            await post_all(client, events[start : start + 100])
            await refresh_block(db, max_rows=70)
        await fold_all(db)
        incremental = await rollup_contents(db)
        assert incremental
        assert await rebuild(db) == 500
        assert await rollup_contents(db) == incremental
        await assert_plans_agree(client, random.Random(5))


async def test_acknowledged_event_is_visible_at_once(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection
) -> None:
    async with make_client() as client:
        await post_all(client, random_events(seed=8, count=50))
        await fold_all(db)
        response = await client.post(
            "/events",
            json={
                "event_name": "purchase",
                "user_id": "brand-new",
                "timestamp": "2026-10-30T12:00:00Z",
            },
        )
        assert response.status_code == 200
        params = {
            "from": "2026-10-30T00:00:00Z",
            "to": "2026-10-31T00:00:00Z",
            "event_name": "purchase",
        }
        raw, rollup = await answers(client, params)
        assert rollup == raw
        assert rollup["total"]["unique_users"] >= 1
        users = await db.fetchval(
            "SELECT count(DISTINCT user_id) FROM events WHERE event_name = 'purchase' "
            "AND ts >= '2026-10-30Z' AND ts < '2026-10-31Z'"
        )
        assert rollup["total"]["unique_users"] == users


async def test_a_rollup_answer_says_how_many_events_it_read_raw(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection
) -> None:
    params = {"from": "2026-10-24T00:00:00Z", "to": "2026-11-09T00:00:00Z", "plan": "rollup"}

    async def unfolded() -> tuple[int, dict[str, Any]]:
        response = await client.get("/metrics", params=params)
        assert response.status_code == 200, response.text
        freshness: dict[str, Any] = response.json()["freshness"]
        pending = await db.fetchval(
            "SELECT count(*) FROM events e LEFT JOIN replication_state s "
            "ON s.target = 'rollups' WHERE s.target IS NULL "
            "OR (e.txid, e.id) > (s.txid, s.last_id)"
        )
        return pending, freshness

    async with make_client() as client:
        await post_all(client, random_events(seed=12, count=300))
        pending, freshness = await unfolded()
        # Nothing folded: every event is read raw, the answer complete all the same.
        assert (pending, freshness["rollup_lag_rows"], freshness["lag_rows"]) == (300, 300, 0)
        assert freshness["source"] == "rollup" and freshness["lag_seconds"] == 0.0
        assert freshness["state"] == "standby"  # the test holds the refresher's lock
        assert await fold(db, max_rows=120) == 120
        pending, freshness = await unfolded()
        assert pending == freshness["rollup_lag_rows"] == 180
        await fold_all(db)
        assert (await unfolded())[1]["rollup_lag_rows"] == 0


async def test_background_refresher_folds_everything(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(rollup_interval_ms=20) as client:
        await post_all(client, random_events(seed=9, count=300))

        async def folded() -> bool:
            health = (await client.get("/health")).json()
            return bool(health["rollups"]["rows_folded"] == 300)

        await wait_until(folded, what="refresher folding all events")
        pending = await db.fetchval(
            "SELECT count(*) FROM events e, replication_state s "
            "WHERE s.target = 'rollups' AND (e.txid, e.id) > (s.txid, s.last_id)"
        )
        assert pending == 0
        await assert_plans_agree(client, random.Random(9))


@pytest.mark.parametrize("max_pending", [1, 10_000])
async def test_auto_plan_falls_back_to_raw_when_refresher_lags(
    make_client: ClientFactory, db: asyncpg.Connection, parked: asyncpg.Connection, max_pending: int
) -> None:
    async with make_client(rollup_max_pending_rows=max_pending) as client:
        await post_all(client, random_events(seed=4, count=40))
        response = await client.get(
            "/metrics", params={"from": "2026-10-24T00:00:00Z", "to": "2026-11-09T00:00:00Z"}
        )
        assert response.status_code == 200
        expected = "raw" if max_pending == 1 else "rollup"
        assert response.headers["x-metrics-plan"] == expected
        assert response.json()["total"]["events"] == 40


async def test_rollups_disabled_means_raw(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    async with make_client(rollups=False) as client:
        await post_all(client, random_events(seed=6, count=20))
        response = await client.get(
            "/metrics",
            params={"from": "2026-10-24T00:00:00Z", "to": "2026-11-09T00:00:00Z", "plan": "rollup"},
        )
        assert response.headers["x-metrics-plan"] == "raw"
        assert response.json()["total"]["events"] == 20
        assert await db.fetchval("SELECT count(*) FROM rollups") == 0
