"""The replicator: copies committed PostgreSQL rows into ClickHouse, gap-free.

Watermark (docs/architecture.md has the full argument): every row carries the id of the
transaction that inserted it (`txid`, xid8). `pg_snapshot_xmin(pg_current_snapshot())` is
the oldest transaction still running, so every transaction with a smaller id has ended
and no row with `txid < xmin` can appear later. The replicator copies rows in
(txid, id) order strictly below that horizon, so a writer that commits late (a smaller
txid committing after a larger one) is never skipped: its rows stay above the horizon
until it ends. The checkpoint (txid, id) of the last copied row is saved in PostgreSQL
after ClickHouse has the block; a crash in between re-sends the block, and FINAL in every
ClickHouse query counts each repeat once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from event_metrics import clickhouse_cluster
from event_metrics.checkpoint import NEXT_ROWS, horizon, load_checkpoint, save_checkpoint
from event_metrics.clickhouse import connect, insert_columns
from event_metrics.follower import Follower
from event_metrics.schema import CLICKHOUSE_TARGET, COLUMN_TYPES, MIRRORED_COLUMNS
from event_metrics.settings import LagSettings, ReplicationSettings

log = logging.getLogger(__name__)

TARGET = CLICKHOUSE_TARGET
# Held by the one active replicator across all service processes.
REPLICATOR_LOCK_ID = 0x45564D52  # "EVMR"
# While idle, still touch ClickHouse so that /health notices an outage. On a cluster,
# through the Distributed table, which asks every shard (a shard down is an error): by a
# key condition no row meets (projects start at 1), which no engine can answer without
# asking, at the cost of one index probe per shard.
PROBE = "SELECT 1"
CLUSTER_PROBE = "SELECT count() FROM events WHERE project_id = 0"

# The txid goes out as text (asyncpg has no xid8 codec) under another name (NEXT_ROWS sorts
# by the table's column, not by that text). ClickHouse's columns as PostgreSQL gives
# them: JSON as its text ('' for none), and a time as the whole seconds since 1970 that a
# ClickHouse DateTime holds. clickhouse-driver passes integers through, while decoding and
# re-encoding two datetimes per row was most of the replicator's CPU (docs/benchmarks.md).


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
FETCH_BATCH = f"SELECT {MIRRORED}, {PARTITION} AS partition, txid::text AS txid_text {NEXT_ROWS}"


def copy_rows(client: Any, rows: Sequence[asyncpg.Record]) -> None:
    """Insert fetched rows into ClickHouse, one block per month. Runs in a worker thread:
    reshaping 10,000 rows took the event loop for tens of milliseconds, which requests
    waiting on it felt as p99 (docs/benchmarks.md)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    partitions = columns[len(MIRRORED_COLUMNS)]
    for block in split_by_month(columns[: len(MIRRORED_COLUMNS)], partitions):
        insert_columns(client, block)


def split_by_month(columns: list[list[Any]], months: list[int]) -> list[list[list[Any]]]:
    """Column-wise rows grouped by their monthly ClickHouse partition (`months`, one per
    row).

    One insert per partition: current ClickHouse refuses an insert that touches more than
    100 partitions (max_partitions_per_insert_block), which one valid request can do.
    """
    if months.count(months[0]) == len(months):  # nearly always: one month
        return [columns]
    rows_of: dict[int, list[int]] = {}
    for at, month in enumerate(months):
        rows_of.setdefault(month, []).append(at)
    return [[[column[at] for at in ats] for column in columns] for ats in rows_of.values()]


class Replicator(Follower):
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
        self.cluster = cluster  # a remote_servers cluster the mirror is sharded over

    @property
    def rows_copied(self) -> int:
        return self.rows_done

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rows_copied": self.rows_copied}

    async def run_once(self) -> int:
        """Copy everything below the current horizon, then return (tests, CLI --once)."""
        connection = await asyncpg.connect(self.database_url)
        client = connect(self.clickhouse_url)
        try:
            await asyncio.to_thread(self._prepare, client)
            copied = 0
            while (n := await self._cycle(connection, client)) > 0:
                copied += n
                self.rows_done += n
            return copied
        finally:
            client.disconnect()
            await connection.close()

    async def work(self, connection: asyncpg.Connection) -> None:
        client = connect(self.clickhouse_url)
        try:
            await asyncio.to_thread(self._prepare, client)
            while not self.stopping:
                started = time.time()
                copied = await self._cycle(connection, client)
                self.finish_cycle(copied, started)
                self.backoff.reset()
                if copied < self.batch_rows:
                    if not copied:
                        probe = CLUSTER_PROBE if self.cluster else PROBE
                        await asyncio.to_thread(client.execute, probe)
                    if await self.sleep(self.interval_s):
                        return
        finally:
            client.disconnect()

    def _prepare(self, client: Any) -> None:
        clickhouse_cluster.prepare(client, self.clickhouse_url, self.cluster)

    async def _cycle(self, connection: asyncpg.Connection, client: Any) -> int:
        """Copy one block of at most batch_rows; return how many rows."""
        txid, last_id = await load_checkpoint(connection, TARGET)
        rows = await connection.fetch(
            FETCH_BATCH, txid, last_id, await horizon(connection), self.batch_rows
        )
        if not rows:
            return 0
        await asyncio.to_thread(copy_rows, client, rows)
        # Only after ClickHouse has the block (on a cluster, every shard its part of it: the
        # insert is synchronous): a crash or a failed shard before this line re-sends it.
        await save_checkpoint(connection, TARGET, (rows[-1]["txid_text"], rows[-1]["id"]))
        return len(rows)
