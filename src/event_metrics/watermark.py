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
import logging
import random

import asyncpg

from event_metrics.writer import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
LOAD_CHECKPOINT = "SELECT txid::text, last_id FROM replication_state WHERE target = $1"
SAVE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (target) DO UPDATE
SET txid = excluded.txid, last_id = excluded.last_id, updated_at = excluded.updated_at
"""
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


class LockedWorker:
    """A background loop that works only while it holds a PostgreSQL advisory lock.

    Several service processes may run one each; the lock makes one of them active and
    the others wait in "standby". Losing the connection releases the lock, so another
    process takes over from the saved checkpoint. Outages are retried with backoff.
    """

    lock_id: int
    retry_errors: tuple[type[BaseException], ...] = TRANSIENT_ERRORS

    def __init__(self, database_url: str, *, interval_s: float, retry_max_s: float) -> None:
        self.database_url = database_url
        self.interval_s = interval_s
        self.retry_max_s = retry_max_s
        self.state = "starting"
        self.last_error: str | None = None
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Work until stop(), retrying through outages."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                connection = await asyncpg.connect(self.database_url)
                try:
                    if await self._wait_for_lock(connection):
                        self.state, self.last_error = "running", None
                        await self.work(connection)
                finally:
                    await connection.close()  # releases the advisory lock
                delay = 0.1
            except self.retry_errors as exc:
                self.state, self.last_error = "retrying", f"{type(exc).__name__}: {exc}"
                await self.on_outage()
                log.warning("%s paused: %s; retrying in %.1fs", type(self).__name__, exc, delay)
                await self.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.retry_max_s)

    async def _wait_for_lock(self, connection: asyncpg.Connection) -> bool:
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_id):
            self.state = "standby"  # another process is the active one
            if await self.sleep(self.interval_s):
                return False
        return True

    async def work(self, connection: asyncpg.Connection) -> None:
        """Run cycles on the lock-holding connection until stop() (sleep() says when)."""
        raise NotImplementedError

    async def on_outage(self) -> None:
        """Hook: refresh what /health reports while retrying."""

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop() was called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True
