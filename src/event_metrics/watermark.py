"""The gap-free (txid, id) watermark over the events table, and the loop of a worker that
follows it (the ClickHouse replicator, the rollup refresher).

Every event row carries the id of the transaction that inserted it. Rows with
`txid < pg_snapshot_xmin(pg_current_snapshot())` belong to transactions that have ended,
so that set is final; a follower reads rows after its checkpoint in (txid, id) order
strictly below that horizon and can never skip a row that commits late. The argument is
written out in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from event_metrics.backoff import Backoff, LoopState, StatusSource
from event_metrics.postgres import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
LOAD_CHECKPOINT = "SELECT txid::text, last_id FROM replication_state WHERE target = $1"
SAVE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (target) DO UPDATE
SET txid = excluded.txid, last_id = excluded.last_id, updated_at = excluded.updated_at
"""
# Rows after a checkpoint (capped, so /health and /metrics stay cheap), and the oldest
# one's age.
PENDING = """
SELECT count(*), min(received_at) FROM (
    SELECT received_at FROM events
    WHERE (txid, id) > ($1::text::xid8, $2::bigint)
    ORDER BY txid, id
    LIMIT $3
) pending
"""
LAG_COUNT_CAP = 1_000_000
Checkpoint = tuple[str, int]  # (txid as text, id) of the last row handled
START: Checkpoint = ("0", 0)


async def horizon(connection: asyncpg.Connection) -> str:
    """The oldest transaction id still running: every smaller one has ended."""
    value: str = await connection.fetchval(HORIZON)
    return value


async def load_checkpoint(connection: asyncpg.Connection, target: str) -> Checkpoint:
    row = await connection.fetchrow(LOAD_CHECKPOINT, target)
    return (row[0], row[1]) if row else START


async def save_checkpoint(
    connection: asyncpg.Connection, target: str, checkpoint: Checkpoint
) -> None:
    await connection.execute(SAVE_CHECKPOINT, target, *checkpoint)


async def measure_lag(
    connection: asyncpg.Connection, checkpoint: Checkpoint, cap: int = LAG_COUNT_CAP
) -> tuple[int, float]:
    """(rows after the checkpoint, at most `cap`; seconds since the oldest was received)."""
    count, oldest = await connection.fetchrow(PENDING, *checkpoint, cap)
    return count, 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())


class LockedWorker(StatusSource):
    """A background loop that works only while it holds a PostgreSQL advisory lock.

    Several service processes may run one each; the lock makes one of them active and
    the others wait in "standby". Losing the connection releases the lock, so another
    process takes over from the saved checkpoint. Any failure, an outage or a server
    error, is retried with backoff and reported as state "failing": the loop only ends
    when stop() is called.
    """

    lock_id: int
    name: str
    target: str  # its checkpoint row in replication_state

    def __init__(self, database_url: str, *, interval_s: float, retry_max_s: float) -> None:
        self.database_url = database_url
        self.interval_s = interval_s
        self.retry_max_s = retry_max_s
        self.loop_state = LoopState(self.name, log)
        self.lag_rows = 0
        self.lag_seconds = 0.0
        self._stopping = asyncio.Event()

    def status(self) -> dict[str, Any]:
        """What /health reports: state, lag (rows after the checkpoint, the oldest's age)."""
        return {
            "state": self.state,
            "lag_rows": self.lag_rows,
            "lag_rows_capped": self.lag_rows >= LAG_COUNT_CAP,
            "lag_seconds": round(self.lag_seconds, 3),
            "last_error": self.last_error,
        }

    async def measure_lag(self, connection: asyncpg.Connection) -> None:
        checkpoint = await load_checkpoint(connection, self.target)
        self.lag_rows, self.lag_seconds = await measure_lag(connection, checkpoint)

    @property
    def state(self) -> str:
        return self.loop_state.state

    @property
    def last_error(self) -> str | None:
        return self.loop_state.last_error

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Work until stop(), retrying through every failure."""
        backoff = Backoff(initial_s=0.1, max_s=self.retry_max_s)
        while not self._stopping.is_set():
            try:
                connection = await asyncpg.connect(self.database_url, timeout=10)
                try:
                    if await self._wait_for_lock(connection):
                        # A failing loop stays failing until work() completes a cycle.
                        if self.loop_state.state != "failing":
                            self.loop_state.set("running")
                        await self.work(connection, backoff)
                finally:
                    await connection.close()  # releases the advisory lock
            except Exception as exc:
                await self.on_outage()  # first, so /health never shows a stale lag
                self.loop_state.fail(exc, retry_in_s=self.retry_max_s)
                if not isinstance(exc, TRANSIENT_ERRORS):
                    log.debug("%s failure", self.name, exc_info=exc)
                await self.sleep(backoff.next_delay())
        self.loop_state.set("stopped")

    async def _wait_for_lock(self, connection: asyncpg.Connection) -> bool:
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_id):
            self.loop_state.set("standby")  # another process is the active one
            if await self.sleep(self.interval_s):
                return False
        return True

    async def work(self, connection: asyncpg.Connection, backoff: Backoff) -> None:
        """Run cycles on the lock-holding connection until stop() (sleep() says when);
        reset `backoff` after each cycle that succeeds."""
        raise NotImplementedError

    async def on_outage(self) -> None:
        """Keep /health's lag current while failing (best effort: PostgreSQL may be down)."""
        with contextlib.suppress(Exception):
            connection = await asyncpg.connect(self.database_url, timeout=2)
            try:
                await self.measure_lag(connection)
            finally:
                await connection.close()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop() was called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True
