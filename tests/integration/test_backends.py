"""Both engines answer /metrics identically once replication has caught up."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from conftest import ClientFactory, mirror, wait_until
from event_metrics.clickhouse import reads_final
from event_metrics.replicator import Replicator
from event_metrics.settings import Settings

BASE = datetime(2026, 10, 25, tzinfo=UTC)
CHANNELS = ["web", "ios", "android", "email", None]
NAMES = ["product_view", "page_view", "add_to_cart", "purchase"]


def generate_events(seed: int, count: int) -> list[dict[str, Any]]:
    """Events over two weeks around the 2026-11-01 DST change, with repeats and late ones."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(count):
        moment = BASE + timedelta(seconds=rng.randrange(14 * 24 * 3600), microseconds=n % 997)
        event: dict[str, Any] = {
            "event_name": rng.choice(NAMES),
            "user_id": f"user-{int(rng.paretovariate(1.2)) % 300}",
            "timestamp": moment.isoformat(),
            "idempotency_key": f"k-{seed}-{n}",
        }
        channel = rng.choice(CHANNELS)
        if channel:
            event["channel"] = channel
        events.append(event)
    # Repeats of earlier events (client retries) and late arrivals, shuffled in.
    events += [dict(e) for e in rng.sample(events, count // 10)]
    rng.shuffle(events)
    return events


async def post_all(client: AsyncTestClient[Any], events: list[dict[str, Any]]) -> int:
    accepted = 0
    for start in range(0, len(events), 250):
        response = await client.post("/events", json=events[start : start + 250])
        assert response.status_code == 200, response.text
        accepted += response.json()["accepted"]
    return accepted


def mirrored_count(clickhouse_url: str, *, final: bool = True) -> int:
    """Events in the mirror as queries count them (FINAL where the shape needs it), or
    every stored row with final=False."""
    with mirror(clickhouse_url) as client:
        shape = reads_final(client)
        if shape is None:
            return 0
        source = "events FINAL" if shape and final else "events"
        count: int = client.execute(f"SELECT count() FROM {source}")[0][0]
        return count


async def below_horizon(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval("SELECT max(txid) < pg_snapshot_xmin(pg_current_snapshot()) FROM events")
    )


async def caught_up(db: asyncpg.Connection, clickhouse_url: str) -> bool:
    expected = await db.fetchval("SELECT count(*) FROM events")
    return mirrored_count(clickhouse_url) == expected


def series_difference(a: dict[str, Any], b: dict[str, Any]) -> list[Any]:
    """The series rows only one side has: a readable failure message."""
    left = [sorted(row.items()) for row in a["series"]]
    right = [sorted(row.items()) for row in b["series"]]
    return [("postgres only", r) for r in left if r not in right] + [
        ("clickhouse only", r) for r in right if r not in left
    ]


QUERIES = [
    {"granularity": g, "group_by": by, "timezone": tz, **extra}
    for g, by, tz, extra in itertools.product(
        ["hour", "day", "week", "month", "total"],
        ["", "channel", "event_name", "channel,event_name"],
        ["UTC", "America/New_York", "Asia/Kolkata"],
        [{}, {"event_name": "product_view"}],
    )
]


async def test_backends_answer_identically(
    make_client: ClientFactory, db: asyncpg.Connection, mirror_url: str, settings: Settings
) -> None:
    events = generate_events(seed=7, count=1500)
    # The replicator is driven by hand here, so its blocks are known: 400 rows each.
    async with make_client(clickhouse_url=mirror_url, replicate=False) as client:
        accepted = await post_all(client, events)
        assert accepted == 1500
        assert settings.database_url is not None
        replication = settings.updated(replication_batch_rows=400).replication
        # Any open transaction on the cluster holds the horizon back: wait until every row
        # is below it, so that both runs below cut the same full blocks.
        await wait_until(lambda: below_horizon(db), what="every row below the horizon")
        assert await Replicator(settings.database_url, mirror_url, replication).run_once() == 1500

        # At-least-once delivery: every block sent again, as a replicator that crashed
        # before saving each checkpoint would (the same ranges, so the same tokens).
        with mirror(mirror_url) as ch:
            exactly_once = not reads_final(ch)
            if not exactly_once:
                # No background merge may collapse the repeats before the queries
                # below: FINAL must be what counts each key once.
                ch.execute("SYSTEM STOP MERGES events")
        await db.execute("DELETE FROM replication_state WHERE target = 'clickhouse'")
        assert await Replicator(settings.database_url, mirror_url, replication).run_once() == 1500
        # The current engine dropped every replayed block; 18.16 stored them again.
        stored = mirrored_count(mirror_url, final=False)
        assert stored == (1500 if exactly_once else 3000)
        assert mirrored_count(mirror_url) == 1500

        window = {"from": "2026-10-24T00:00:00Z", "to": "2026-11-09T00:00:00Z"}
        for params in QUERIES:
            answers = []
            for backend in ("postgres", "clickhouse"):
                response = await client.get(
                    "/metrics", params={**window, **params, "backend": backend}
                )
                assert response.status_code == 200, (params, response.text)
                body = response.json()
                assert body.pop("backend") == backend
                assert body.pop("freshness")["source"] in {"rollup", "raw", backend}
                answers.append(body)
            assert answers[0] == answers[1], (params, series_difference(*answers))
            assert answers[0]["total"]["events"] > 0


async def test_unaligned_window_and_default_backend(
    make_client: ClientFactory, db: asyncpg.Connection, mirror_url: str
) -> None:
    clickhouse_url = mirror_url
    events = generate_events(seed=11, count=400)
    async with make_client(
        clickhouse_url=clickhouse_url, backend="clickhouse", replication_interval_ms=50
    ) as client:
        await post_all(client, events)
        await wait_until(lambda: caught_up(db, clickhouse_url), what="replication")
        params = {
            "from": "2026-10-27T10:17:31+02:00",
            "to": "2026-11-03T03:00:01Z",
            "granularity": "hour",
            "group_by": "channel",
            "timezone": "Asia/Kathmandu",
        }
        clickhouse = (await client.get("/metrics", params=params)).json()
        postgres = (await client.get("/metrics", params={**params, "backend": "postgres"})).json()
        assert clickhouse.pop("backend") == "clickhouse"
        assert postgres.pop("backend") == "postgres"
        assert clickhouse.pop("freshness")["source"] == "clickhouse"
        assert postgres.pop("freshness")["source"] == "rollup"
        assert clickhouse == postgres

        async def counted() -> bool:
            # rows_copied grows once the checkpoint is saved, just after ClickHouse has
            # the rows.
            health = (await client.get("/health")).json()
            return bool(health["replication"]["rows_copied"] >= 400)

        await wait_until(counted, what="/health counting the copied rows")
        health = (await client.get("/health")).json()
        assert health["replication"]["state"] == "running"


@pytest.mark.parametrize("backend", ["clickhouse"])
async def test_clickhouse_backend_not_configured(
    client: AsyncTestClient[Any], backend: str
) -> None:
    response = await client.get(
        "/metrics",
        params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z", "backend": backend},
    )
    assert response.status_code == 400
    assert response.json()["parameter"] == "backend"


async def test_clickhouse_without_events_table_is_unavailable(
    make_client: ClientFactory, mirror_url: str
) -> None:
    clickhouse_url = mirror_url
    # No replicator in this process, so nothing has created ClickHouse's tables yet.
    async with make_client(clickhouse_url=clickhouse_url, replicate=False) as client:
        response = await client.get(
            "/metrics",
            params={
                "from": "2026-11-01T00:00:00Z",
                "to": "2026-11-02T00:00:00Z",
                "backend": "clickhouse",
            },
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "backend_unavailable"
        assert "events table" in response.json()["detail"]
