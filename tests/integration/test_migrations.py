"""Migrating a populated deployment to projects (alembic 0002 -> 0003, ClickHouse schema
1 -> 2): events, rollups and the replicated ClickHouse table move to the project
'default', and every answer is the same after as before."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from pyroaring import BitMap

from conftest import ADMIN_URL, mirror, wait_until
from event_metrics import projects
from event_metrics.app import create_app
from event_metrics.clickhouse import reads_final
from event_metrics.migrations import upgrade_head
from event_metrics.settings import Settings

# The tables as revision 0002 and ClickHouse schema version 1 left them (history, so
# written out rather than derived from today's schema).
CLICKHOUSE_V1 = (
    "CREATE TABLE events (id UInt64, idempotency_key String, event_name String, "
    "user_id String, channel String, ts DateTime('UTC'), received_at DateTime('UTC'), "
    "properties String) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) "
    "ORDER BY (event_name, ts, idempotency_key)"
)
LEVELS_V2 = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}
START = datetime(2026, 10, 28, tzinfo=UTC)


def old_events(seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for n in range(400):
        ts = START + timedelta(seconds=rng.randrange(6 * 86400))
        rows.append((f"k{n}", rng.choice(["view", "buy", "signup"]), f"u{rng.randrange(60)}",
                     rng.choice(["web", "ios", ""]), ts, ts, f'{{"n": {n}}}'))  # fmt: skip
    return rows


def old_rollups(rows: list[tuple[Any, ...]], uids: dict[str, int]) -> list[tuple[Any, ...]]:
    """The rollups revision 0002's refresher would have written for these events."""
    cells: dict[tuple[Any, ...], tuple[int, BitMap]] = {}
    for _, name, user, channel, ts, _, _ in rows:
        hour = ts.replace(minute=0, second=0, microsecond=0)
        for level, (keep_name, keep_channel) in LEVELS_V2.items():
            for grain, bucket in ((0, hour), (1, hour.replace(hour=0))):
                key = (grain, level, bucket, name if keep_name else "",
                       channel if keep_channel else "")  # fmt: skip
                events, users = cells.get(key, (0, BitMap()))
                users.add(uids[user])
                cells[key] = (events + 1, users)
    return [(*key, events, len(users), users.serialize()) for key, (events, users) in cells.items()]


@pytest.fixture
async def old_database() -> AsyncIterator[str]:
    admin = await asyncpg.connect(ADMIN_URL)
    name = f"event_metrics_migration_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        await upgrade_head(url, "0002")
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def oracle(rows: list[tuple[Any, ...]], by: str | None) -> dict[Any, tuple[int, int]]:
    """Per UTC day (and `by`): (events, unique users), from the events themselves."""
    cells: dict[Any, list[str]] = {}
    for _, name, user, channel, ts, _, _ in rows:
        group = {"event_name": name, "channel": channel or None, None: None}[by]
        cells.setdefault((ts.date().isoformat(), group), []).append(user)
    return {key: (len(users), len(set(users))) for key, users in cells.items()}


async def test_a_populated_deployment_moves_to_the_default_project_with_the_same_answers(
    old_database: str, mirror_url: str
) -> None:
    clickhouse_url = mirror_url
    rows = old_events()
    connection = await asyncpg.connect(old_database)
    try:
        await connection.executemany(
            "INSERT INTO events (idempotency_key, event_name, user_id, channel, ts, received_at, "
            "properties) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
            rows,
        )
        users = sorted({row[2] for row in rows})
        await connection.executemany(
            "INSERT INTO user_ids (user_id) VALUES ($1)", [(u,) for u in users]
        )
        uids = dict(await connection.fetch("SELECT user_id, uid FROM user_ids"))
        await connection.executemany(
            "INSERT INTO rollups (grain, level, bucket, event_name, channel, events, users_count, "
            "users) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            old_rollups(rows, uids),
        )
        # Both followers are caught up: every event is folded and replicated.
        for target in ("rollups", "clickhouse"):
            await connection.execute(
                "INSERT INTO replication_state (target, txid, last_id) "
                "SELECT $1, txid, id FROM events ORDER BY txid DESC, id DESC LIMIT 1",
                target,
            )
        rollups_before = await connection.fetch(
            "SELECT grain, level, bucket, event_name, channel, events, users_count, users "
            "FROM rollups ORDER BY 1, 2, 3, 4, 5"
        )
        ids = await connection.fetch("SELECT id, idempotency_key FROM events")
    finally:
        await connection.close()
    with mirror(clickhouse_url) as ch:
        ch.execute(CLICKHOUSE_V1)
        ch.execute("CREATE TABLE schema_version (version UInt32, applied_at DateTime('UTC')) "
                   "ENGINE = TinyLog")  # fmt: skip
        ch.execute("INSERT INTO schema_version (version, applied_at) SELECT 1, now()")
        by_key = {key: id_ for id_, key in ids}
        old_rows = [
            (by_key[key], key, name, user, channel, int(ts.timestamp()), int(at.timestamp()), p)
            for key, name, user, channel, ts, at, p in rows
        ]
        ch.insert(
            "events",
            ("id", "idempotency_key", "event_name", "user_id", "channel", "ts", "received_at",
             "properties"),
            [list(column) for column in zip(*old_rows, strict=True)],
        )  # fmt: skip

    await upgrade_head(old_database)

    connection = await asyncpg.connect(old_database)
    try:
        assert await connection.fetchval("SELECT count(*) FROM events WHERE project_id = 1") == 400
        rollups_after = await connection.fetch(
            "SELECT grain, level, bucket, event_name, channel, events, users_count, users "
            "FROM rollups WHERE project_id = 1 ORDER BY 1, 2, 3, 4, 5"
        )
        assert [tuple(r) for r in rollups_after] == [tuple(r) for r in rollups_before]
        read = await projects.create_key(connection, "default", "read")
    finally:
        await connection.close()

    settings = Settings.build(
        database_url=old_database, clickhouse_url=clickhouse_url, replication_interval_ms=20
    )
    async with AsyncTestClient(app=create_app(settings), timeout=60) as client:
        client.headers["Authorization"] = f"Bearer {read.key}"

        def mirrored() -> bool:
            with mirror(clickhouse_url) as check:
                try:
                    version = check.execute("SELECT max(version) FROM schema_version")[0][0]
                    final = " FINAL" if reads_final(check) else ""
                    count = check.execute(f"SELECT count() FROM events{final} WHERE project_id = 1")
                    return bool(version == 2 and count[0][0] == 400)
                except Exception:  # the table is being swapped
                    return False

        await wait_until(mirrored, what="ClickHouse rebuilt with project_id")
        window = {"from": "2026-10-28T00:00:00Z", "to": "2026-11-04T00:00:00Z",
                  "granularity": "day"}  # fmt: skip
        for by in (None, "event_name", "channel"):
            expected = oracle(rows, by)
            answers = []
            for engine in ({"plan": "rollup"}, {"plan": "raw"}, {"backend": "clickhouse"}):
                params = {**window, **engine, **({"group_by": by} if by else {})}
                response = await client.get("/metrics", params=params)
                assert response.status_code == 200, response.text
                if engine.get("plan") == "rollup":
                    assert response.headers["x-metrics-plan"] == "rollup"
                series = response.json()["series"]
                got = {
                    (row["bucket_start"][:10], row.get(by) if by else None): (
                        row["events"], row["unique_users"])
                    for row in series
                }  # fmt: skip
                answers.append(got)
            assert answers[0] == answers[1] == answers[2] == expected, by
