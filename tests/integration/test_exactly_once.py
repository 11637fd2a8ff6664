"""Exactly-once into ClickHouse: a replicator killed between its insert and its checkpoint
leaves every row stored once, and a mirror of the old shape is converted in place."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from conftest import mirror, wait_until
from event_metrics import metrics, verify
from event_metrics.clickhouse import (
    ClickHousePool,
    apply_schema,
    events_ddl,
    exactly_once,
    reads_final,
)
from event_metrics.freshness import behind
from event_metrics.metrics_clickhouse import fetch_metrics
from event_metrics.replicator import KILL_AFTER_INSERT_VARIABLE, MIRRORED, Replicator, load_state
from event_metrics.schema import MIRRORED_COLUMNS
from event_metrics.settings import Settings

# 1,300 events a minute apart from 2026-10-31 12:00Z: in blocks of 500, the second block
# spans October and November (two inserts, two tokens).
INSERT_EVENTS = """
INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts,
                    received_at, properties)
SELECT 1, 'k' || n, 'e' || n % 3, 'u' || n % 50, '',
       timestamptz '2026-10-31 12:00Z' + n * interval '1 minute', now(),
       jsonb_build_object('n', n)
FROM generate_series($1::int, $2::int) n
"""
BATCH_ROWS = 500


async def below_horizon(db: asyncpg.Connection) -> bool:
    """Every row is below the horizon (other tests' open transactions hold it back), so
    one `replicate --once` copies them all, in full blocks."""
    return bool(
        await db.fetchval("SELECT max(txid) < pg_snapshot_xmin(pg_current_snapshot()) FROM events")
    )


async def replicate_once(database_url: str, clickhouse_url: str, kill_after: int = 0) -> int:
    """`event-metrics replicate --once` in a process of its own; its exit status."""
    env = {
        **os.environ,
        "EVENT_METRICS_DATABASE_URL": database_url,
        "EVENT_METRICS_CLICKHOUSE_URL": clickhouse_url,
        "EVENT_METRICS_REPLICATION_BATCH_ROWS": str(BATCH_ROWS),
        KILL_AFTER_INSERT_VARIABLE: str(kill_after),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event_metrics.cli", "replicate", "--once",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    if process.returncode not in (0, -9):
        raise AssertionError(err.decode(errors="replace"))
    return process.returncode


def stored(url: str) -> tuple[int, int, bool]:
    """(rows stored, distinct keys, whether queries read FINAL) in the mirror."""
    with mirror(url) as client:
        [(rows, keys)] = client.execute("SELECT count(), uniqExact(idempotency_key) FROM events")
        return rows, keys, bool(reads_final(client))


async def test_a_replicator_killed_between_insert_and_checkpoint_stores_each_row_once(
    db: asyncpg.Connection, database_url: str, mirror_url: str
) -> None:
    await db.execute(INSERT_EVENTS, 1, 1300)
    await wait_until(lambda: below_horizon(db), what="every row below the horizon")

    # SIGKILL after the second block is in ClickHouse, before its checkpoint is saved.
    assert await replicate_once(database_url, mirror_url, kill_after=2) == -9
    checkpoint, pending = await load_state(db)
    ids = await db.fetch("SELECT txid::text, id FROM events ORDER BY txid, id")
    assert checkpoint == tuple(ids[BATCH_ROWS - 1])
    assert pending == tuple(ids[2 * BATCH_ROWS - 1])
    assert stored(mirror_url)[:2] == (1000, 1000)

    # Killed again, right after replaying that block: still each row once.
    assert await replicate_once(database_url, mirror_url, kill_after=1) == -9
    assert await load_state(db) == (checkpoint, pending)
    assert stored(mirror_url)[:2] == (1000, 1000)

    assert await replicate_once(database_url, mirror_url) == 0
    assert await load_state(db) == (tuple(ids[-1]), None)
    rows, keys, final = stored(mirror_url)
    # Each row once, without FINAL, on both engines; queries read FINAL on 18.16 only.
    assert (rows, keys) == (1300, 1300)
    with mirror(mirror_url) as client:
        assert final is not exactly_once(client)
    report, _ = await verify.run(database_url, mirror_url, fix=False)
    assert report.cells > 0 and report.differences == []


async def test_a_mirror_of_the_old_shape_is_converted_with_each_row_once(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, settings: Settings
) -> None:
    """A current engine's mirror written by an older version (ReplacingMergeTree, read
    with FINAL, a block stored twice, and a block in flight when it stopped) becomes a
    MergeTree holding each row once; a reader that knew the old shape answers right
    before and after."""
    url = f"chdb://{tmp_path}/chdb"
    await db.execute(INSERT_EVENTS, 1, 900)
    await wait_until(lambda: below_horizon(db), what="every row below the horizon")
    rows = await db.fetch(f"SELECT {MIRRORED} FROM events ORDER BY txid, id")
    ids = await db.fetch("SELECT txid::text, id FROM events ORDER BY txid, id")
    columns = [list(column) for column in zip(*rows, strict=True)]
    with mirror(url) as client:
        client.execute("CREATE TABLE schema_version (version UInt32, applied_at DateTime('UTC')) "
                       "ENGINE = TinyLog")  # fmt: skip
        client.execute("INSERT INTO schema_version (version, applied_at) SELECT 1, now()")
        client.execute("INSERT INTO schema_version (version, applied_at) SELECT 2, now()")
        client.execute(events_ddl(exactly_once=False))
        client.execute("SYSTEM STOP MERGES events")
        for block in (columns, [column[:600] for column in columns]):  # 600 rows twice
            client.insert("events", MIRRORED_COLUMNS, block)
        assert reads_final(client) is True
    # Copied up to row 600; rows 601-900 were the block in flight, already in ClickHouse.
    await db.execute(
        "INSERT INTO replication_state (target, txid, last_id, pending_txid, pending_last_id) "
        "VALUES ('clickhouse', $1::text::xid8, $2, $3::text::xid8, $4)",
        *ids[599], *ids[-1],
    )  # fmt: skip

    pool = ClickHousePool(url, size=2, timeout_s=30)
    query = metrics.parse_query(
        project_id=1, start="2026-10-31T00:00:00Z", end="2026-11-02T00:00:00Z",
        event_name=None, granularity="day", group_by="event_name", timezone="UTC",
        max_window_days=400,
    )  # fmt: skip
    try:
        before = await fetch_metrics(pool, query, 1000, behind("clickhouse", None))
        assert before.total.events == 900 and await pool.reads_final() is True

        assert settings.database_url is not None
        replicator = Replicator(settings.database_url, url, settings.replication)
        assert await replicator.run_once() == 300  # the replay: ClickHouse had all of it
        with mirror(url) as client:
            assert reads_final(client) is False
            [(engine, ddl)] = client.execute(
                "SELECT engine, create_table_query FROM system.tables "
                "WHERE database = currentDatabase() AND name = 'events'"
            )
            assert engine == "MergeTree" and "non_replicated_deduplication_window" in ddl
            assert client.execute("SELECT max(version) FROM schema_version") == [(2,)]
            assert apply_schema(client) == []  # nothing more to do on the next start
        assert stored(url)[:2] == (900, 900)
        assert await load_state(db) == (tuple(ids[-1]), None)

        # The pool still thinks FINAL: ClickHouse refuses it on a MergeTree, and the pool
        # looks at the table again.
        after = await fetch_metrics(pool, query, 1000, behind("clickhouse", None))
        assert await pool.reads_final() is False
        assert after.total == before.total and after.series == before.series
    finally:
        await pool.close()
    report, _ = await verify.run(database_url, url, fix=False)
    assert report.differences == []
