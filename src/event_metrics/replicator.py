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
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from event_metrics.clickhouse import UNREACHABLE_ERRORS, apply_schema, connect, insert_columns
from event_metrics.settings import Settings
from event_metrics.writer import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

TARGET = "clickhouse"
# Held by the one active replicator across all service processes.
REPLICATOR_LOCK_ID = 0x45564D52  # "EVMR"

HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
LOAD_CHECKPOINT = "SELECT txid::text, last_id FROM replication_state WHERE target = $1"
SAVE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (target) DO UPDATE
SET txid = excluded.txid, last_id = excluded.last_id, updated_at = excluded.updated_at
"""
FETCH_BATCH = """
SELECT id, idempotency_key, event_name, user_id, channel, ts, received_at,
       coalesce(properties::text, ''), txid::text
FROM events
WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND txid < $3::text::xid8
ORDER BY txid, id
LIMIT $4
"""
# Lag: rows after the checkpoint (capped, so /health stays cheap) and the oldest one's age.
MEASURE_LAG = """
SELECT count(*), min(received_at) FROM (
    SELECT received_at FROM events
    WHERE (txid, id) > ($1::text::xid8, $2::bigint)
    ORDER BY txid, id
    LIMIT $3
) pending
"""
LAG_COUNT_CAP = 1_000_000


@dataclass
class ReplicationStatus:
    """What /health reports about replication."""

    state: str = "starting"
    rows_copied: int = 0
    lag_rows: int = 0
    lag_rows_capped: bool = False
    lag_seconds: float = 0.0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "rows_copied": self.rows_copied,
            "lag_rows": self.lag_rows,
            "lag_rows_capped": self.lag_rows_capped,
            "lag_seconds": round(self.lag_seconds, 3),
            "last_error": self.last_error,
        }


class Replicator:
    """Copies events from PostgreSQL to ClickHouse while it holds the replicator lock."""

    def __init__(self, settings: Settings) -> None:
        if not settings.database_url or not settings.clickhouse_url:
            raise ValueError("the replicator needs both database_url and clickhouse_url")
        self.settings = settings
        self.status = ReplicationStatus()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Replicate until stop(); survive PostgreSQL and ClickHouse outages by retrying."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                await self._run_with_lock()
                delay = 0.1
            except (*TRANSIENT_ERRORS, *UNREACHABLE_ERRORS) as exc:
                self.status.state = "retrying"
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                await self._measure_lag_alone()
                log.warning("replication paused: %s; retrying in %.1fs", exc, delay)
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.settings.replication_retry_max_ms / 1000)

    async def run_once(self) -> int:
        """Copy everything below the current horizon, then return (tests, CLI --once)."""
        connection = await asyncpg.connect(self.settings.database_url)
        client = connect(self.settings.clickhouse_url or "")
        try:
            await asyncio.to_thread(apply_schema, client)
            copied = 0
            while (n := await self._cycle(connection, client)) > 0:
                copied += n
            return copied
        finally:
            client.disconnect()
            await connection.close()

    async def _run_with_lock(self) -> None:
        connection = await asyncpg.connect(self.settings.database_url)
        client = connect(self.settings.clickhouse_url or "")
        try:
            while not await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", REPLICATOR_LOCK_ID
            ):
                self.status.state = "standby"  # another process replicates
                if await self._sleep(self.settings.replication_interval_ms / 1000):
                    return
            await asyncio.to_thread(apply_schema, client)
            self.status.state = "running"
            self.status.last_error = None
            interval = self.settings.replication_interval_ms / 1000
            while not self._stopping.is_set():
                copied = await self._cycle(connection, client)
                if copied < self.settings.replication_batch_rows:
                    await self._measure_lag(connection)
                    if not copied:
                        # Idle: still touch ClickHouse, so /health notices an outage.
                        await asyncio.to_thread(client.execute, "SELECT 1")
                    if await self._sleep(interval):
                        return
        finally:
            client.disconnect()
            await connection.close()  # releases the advisory lock

    async def _cycle(self, connection: asyncpg.Connection, client: Any) -> int:
        """Copy one block of at most replication_batch_rows; return how many rows."""
        checkpoint = await connection.fetchrow(LOAD_CHECKPOINT, TARGET)
        txid, last_id = (checkpoint[0], checkpoint[1]) if checkpoint else ("0", 0)
        horizon = await connection.fetchval(HORIZON)
        rows = await connection.fetch(
            FETCH_BATCH, txid, last_id, horizon, self.settings.replication_batch_rows
        )
        if not rows:
            return 0
        columns = [list(column) for column in zip(*(tuple(r)[:8] for r in rows), strict=True)]
        await asyncio.to_thread(insert_columns, client, columns)
        last = rows[-1]
        await connection.execute(SAVE_CHECKPOINT, TARGET, last[8], last[0])
        self.status.rows_copied += len(rows)
        return len(rows)

    async def _measure_lag(self, connection: asyncpg.Connection) -> None:
        checkpoint = await connection.fetchrow(LOAD_CHECKPOINT, TARGET)
        txid, last_id = (checkpoint[0], checkpoint[1]) if checkpoint else ("0", 0)
        count, oldest = await connection.fetchrow(MEASURE_LAG, txid, last_id, LAG_COUNT_CAP)
        self.status.lag_rows = count
        self.status.lag_rows_capped = count >= LAG_COUNT_CAP
        self.status.lag_seconds = _age_s(oldest)

    async def _measure_lag_alone(self) -> None:
        """Keep /health's lag current while ClickHouse is down (best effort)."""
        try:
            connection = await asyncpg.connect(self.settings.database_url, timeout=2)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
            return
        try:
            await self._measure_lag(connection)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
            pass
        finally:
            await connection.close()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop() was called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True


def _age_s(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return max(0.0, time.time() - moment.timestamp())
