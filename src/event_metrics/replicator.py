"""The replicator: copies committed PostgreSQL rows into ClickHouse, gap-free, each once.

Watermark (docs/architecture.md has the full argument): every row carries the id of the
transaction that inserted it (`txid`, xid8). `pg_snapshot_xmin(pg_current_snapshot())` is
the oldest transaction still running, so every transaction with a smaller id has ended
and no row with `txid < xmin` can appear later. The replicator copies rows in
(txid, id) order strictly below that horizon, so a writer that commits late (a smaller
txid committing after a larger one) is never skipped: its rows stay above the horizon
until it ends.

Exactly once: before inserting a block, the replicator saves the block's end, its
"pending" range (checkpoint, end], in PostgreSQL; after ClickHouse has it, the end becomes
the checkpoint. A crash in between replays exactly that range (every row in it was final
when it was read: its txid is below the horizon of then), in the same monthly blocks with
the same deduplication tokens, so an engine with tokens drops what it already has; and a
replay first asks ClickHouse which of the range's ids it holds, so 18.16 (no tokens) and
a table rebuilt since get only what they miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from event_metrics import clickhouse_cluster
from event_metrics.backoff import Backoff
from event_metrics.clickhouse import insert_columns
from event_metrics.clickhouse_client import ClickHouseClient, connect
from event_metrics.schema import CLICKHOUSE_TARGET, COLUMN_TYPES, MIRRORED_COLUMNS
from event_metrics.settings import LagSettings, ReplicationSettings
from event_metrics.watermark import Checkpoint, LockedWorker, horizon

log = logging.getLogger(__name__)

TARGET = CLICKHOUSE_TARGET
# Held by the one active replicator across all service processes.
REPLICATOR_LOCK_ID = 0x45564D52  # "EVMR"
# Tests only: SIGKILL the replicator after its Nth ClickHouse insert, before the
# checkpoint is saved (a crash at the one moment that makes a replay).
KILL_AFTER_INSERT_VARIABLE = "EVENT_METRICS_REPLICATOR_KILL_AFTER_INSERT"
# While idle, still touch ClickHouse so that /health notices an outage. On a cluster,
# through the Distributed table, which asks every shard (a shard down is an error): by a
# key condition no row meets (projects start at 1), which no engine can answer without
# asking, at the cost of one index probe per shard.
PROBE = "SELECT 1"
CLUSTER_PROBE = "SELECT count() FROM events WHERE project_id = 0"

# The txid goes out as text (asyncpg has no xid8 codec) under another name: ORDER BY
# prefers an output column to a table column of the same name, and sorting by the text
# put '10000' before '9995', moving the checkpoint past rows never copied.
# ClickHouse's columns as PostgreSQL gives them: JSON as its text ('' for none), and a
# time as the whole seconds since 1970 that a ClickHouse DateTime holds. clickhouse-driver
# passes integers through, while decoding and re-encoding two datetimes per row was most
# of the replicator's CPU (docs/benchmarks.md).


def _mirrored(name: str) -> str:
    kind = COLUMN_TYPES[name].postgres if name in COLUMN_TYPES else None
    if kind == "jsonb":
        return f"coalesce({name}::text, '') AS {name}"
    if kind == "timestamptz":
        return f"floor(extract(epoch FROM {name}))::bigint AS {name}"
    return name


MIRRORED = ", ".join(_mirrored(name) for name in MIRRORED_COLUMNS)
# ClickHouse's monthly partition of a row (toYYYYMM(ts) there).
PARTITION = "to_char(ts AT TIME ZONE 'UTC', 'YYYYMM')::integer"
FETCH_BATCH = f"""
SELECT {MIRRORED}, {PARTITION} AS partition, txid::text AS txid_text
FROM events
WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND txid < $3::text::xid8
ORDER BY events.txid, events.id
LIMIT $4
"""
# A pending block again: every row up to its end was final when the block was read.
FETCH_PENDING = f"""
SELECT {MIRRORED}, {PARTITION} AS partition, txid::text AS txid_text
FROM events
WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND (txid, id) <= ($3::text::xid8, $4::bigint)
ORDER BY events.txid, events.id
"""
LOAD_STATE = """
SELECT txid::text, last_id, pending_txid::text, pending_last_id
FROM replication_state WHERE target = $1
"""
SAVE_PENDING = """
INSERT INTO replication_state (target, txid, last_id, pending_txid, pending_last_id)
VALUES ($1, $2::text::xid8, $3, $4::text::xid8, $5)
ON CONFLICT (target) DO UPDATE
SET pending_txid = excluded.pending_txid, pending_last_id = excluded.pending_last_id,
    updated_at = now()
"""
SAVE_DONE = """
UPDATE replication_state
SET txid = $2::text::xid8, last_id = $3, pending_txid = NULL, pending_last_id = NULL,
    updated_at = now()
WHERE target = $1
"""
# The ids of a replayed block that ClickHouse holds; the block's times bound the parts read.
# Asked PRESENT_IDS_CHUNK ids at a time: a statement is at most 256 KiB (max_query_size).
PRESENT_IDS_CHUNK = 10_000
PRESENT_IDS = """
SELECT id FROM events
WHERE ts >= toDateTime(%(first)s) AND ts <= toDateTime(%(last)s) AND id IN %(ids)s
"""


async def load_state(
    connection: asyncpg.Connection,
) -> tuple[Checkpoint, Checkpoint | None]:
    """The checkpoint, and the end of the block in flight when the last attempt stopped."""
    row = await connection.fetchrow(LOAD_STATE, TARGET)
    if row is None:
        return ("0", 0), None
    pending = None if row[2] is None else (row[2], row[3])
    return (row[0], row[1]), pending


def block_token(start: Checkpoint, end: Checkpoint, month: int) -> str:
    """The insert_deduplication_token of a range's block of one month: the same for a
    replay of the range, different for any other block."""
    return f"events:{start[0]}.{start[1]}-{end[0]}.{end[1]}:{month}"


def copy_rows(
    client: ClickHouseClient,
    rows: Sequence[asyncpg.Record],
    start: Checkpoint,
    end: Checkpoint,
    *,
    replay: bool = False,
) -> None:
    """Insert the rows of the range (start, end] into ClickHouse, one block per month,
    each with its token; a replay inserts only the rows ClickHouse lacks. Runs in a
    worker thread: reshaping 10,000 rows took the event loop for tens of milliseconds,
    which requests waiting on it felt as p99 (docs/benchmarks.md)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    months = columns[len(MIRRORED_COLUMNS)]
    mirrored = columns[: len(MIRRORED_COLUMNS)]
    if replay:
        mirrored, months = _missing(client, mirrored, months)
    for month, block in split_by_month(mirrored, months).items():
        insert_columns(client, block, token=block_token(start, end, month))


def _missing(
    client: ClickHouseClient, columns: list[list[Any]], months: list[int]
) -> tuple[list[list[Any]], list[int]]:
    ids, times = columns[MIRRORED_COLUMNS.index("id")], columns[MIRRORED_COLUMNS.index("ts")]
    present: set[int] = set()
    for at in range(0, len(ids), PRESENT_IDS_CHUNK):
        chunk = slice(at, at + PRESENT_IDS_CHUNK)
        params = {"first": min(times[chunk]), "last": max(times[chunk]), "ids": tuple(ids[chunk])}
        present.update(row[0] for row in client.execute(PRESENT_IDS, params))
    keep = [at for at, id_ in enumerate(ids) if id_ not in present]
    if present:
        log.info("replayed block: ClickHouse had %d of its %d rows", len(present), len(ids))
    return [[column[at] for at in keep] for column in columns], [months[at] for at in keep]


def split_by_month(columns: list[list[Any]], months: list[int]) -> dict[int, list[list[Any]]]:
    """Column-wise rows grouped by their monthly ClickHouse partition (`months`, one per
    row), by month.

    One insert per partition: current ClickHouse refuses an insert that touches more than
    100 partitions (max_partitions_per_insert_block), which one valid request can do; and
    a token then names one block.
    """
    if not months:
        return {}
    if months.count(months[0]) == len(months):  # nearly always: one month
        return {months[0]: columns}
    rows_of: dict[int, list[int]] = {}
    for at, month in enumerate(months):
        rows_of.setdefault(month, []).append(at)
    return {
        month: [[column[at] for at in ats] for column in columns] for month, ats in rows_of.items()
    }


class Replicator(LockedWorker):
    """Copies events from PostgreSQL to ClickHouse while it holds the replicator lock."""

    lock_id = REPLICATOR_LOCK_ID
    name = "replicator"
    target = TARGET

    def __init__(
        self,
        database_url: str,
        clickhouse_url: str,
        settings: ReplicationSettings,
        *,
        lag: LagSettings = LagSettings(),  # noqa: B008 - frozen
        cluster: str | None = None,
    ) -> None:
        super().__init__(
            database_url,
            interval_s=settings.interval_s,
            retry_max_s=settings.retry_max_s,
            batch_rows=settings.batch_rows,
            lag_settings=lag,
        )
        self.clickhouse_url = clickhouse_url
        self._kill_after = int(os.environ.get(KILL_AFTER_INSERT_VARIABLE) or 0)
        self._inserts = 0
        self.cluster = cluster  # a remote_servers cluster the mirror is sharded over

    @property
    def rows_copied(self) -> int:
        return self.rows_done

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rows_copied": self.rows_copied}

    async def run_once(self) -> int:
        """Copy everything below the current horizon, then return (tests, CLI --once)."""
        connection = await asyncpg.connect(self.database_url)
        client = await asyncio.to_thread(connect, self.clickhouse_url)
        try:
            await asyncio.to_thread(self._prepare, client)
            copied = 0
            while (n := await self._cycle(connection, client)) > 0:
                copied += n
                self.rows_done += n
            return copied
        finally:
            client.close()
            await connection.close()

    async def work(self, connection: asyncpg.Connection, backoff: Backoff) -> None:
        client = await asyncio.to_thread(connect, self.clickhouse_url)
        try:
            await asyncio.to_thread(self._prepare, client)
            while not self.stopping:
                started = time.time()
                copied = await self._cycle(connection, client)
                self.finish_cycle(copied, started)
                backoff.reset()
                if copied < self.batch_rows:
                    if not copied:
                        probe = CLUSTER_PROBE if self.cluster else PROBE
                        await asyncio.to_thread(client.execute, probe)
                    if await self.sleep(self.interval_s):
                        return
        finally:
            client.close()

    def _prepare(self, client: ClickHouseClient) -> None:
        clickhouse_cluster.prepare(client, self.clickhouse_url, self.cluster)

    async def _cycle(self, connection: asyncpg.Connection, client: ClickHouseClient) -> int:
        """Copy one block of at most batch_rows (or the block left in flight); return how
        many rows."""
        start, pending = await load_state(connection)
        if pending is not None:
            rows = await connection.fetch(FETCH_PENDING, *start, *pending)
            end = pending
            log.info("replaying the block after %s up to %s", start, end)
            if not rows:  # nothing left of it in PostgreSQL: on to the next block
                await connection.execute(SAVE_DONE, TARGET, *end)
                return await self._cycle(connection, client)
        else:
            rows = await connection.fetch(
                FETCH_BATCH, *start, await horizon(connection), self.batch_rows
            )
            if not rows:
                return 0
            end = (rows[-1]["txid_text"], rows[-1]["id"])
            # Before ClickHouse sees the block: a crash from here on replays this range.
            await connection.execute(SAVE_PENDING, TARGET, *start, *end)
        await asyncio.to_thread(copy_rows, client, rows, start, end, replay=pending is not None)
        self._after_insert()
        # Only after ClickHouse has the block (on a cluster, every shard its part of it: the
        # insert is synchronous): a crash or a failed shard before this line replays it.
        await connection.execute(SAVE_DONE, TARGET, *end)
        return len(rows)

    def _after_insert(self) -> None:
        self._inserts += 1
        if self._kill_after and self._inserts >= self._kill_after:
            log.warning("killed after insert %d (%s)", self._inserts, KILL_AFTER_INSERT_VARIABLE)
            os.kill(os.getpid(), signal.SIGKILL)
