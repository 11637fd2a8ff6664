"""Rollups: per-hour and per-day event counts with exact user bitmaps, kept up to date.

The refresher follows the events table with the same gap-free (txid, id) watermark as
the ClickHouse replicator (docs/architecture.md), and commits each block's rollup changes
together with its checkpoint: every event is folded in exactly once, late events update
the old buckets they belong to, and duplicates never reach it (only stored rows do).
Unique users stay exact because each rollup row keeps the set of users, as a roaring
bitmap of dense integer ids, rather than a count.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pyroaring import BitMap

from event_metrics.settings import Settings
from event_metrics.writer import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

TARGET = "rollups"
REFRESHER_LOCK_ID = 0x45564D55  # "EVMU"

HOUR, DAY = 0, 1
# Dimension levels: which of (event_name, channel) a rollup row keeps.
LEVELS = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}

LOAD_CHECKPOINT = "SELECT txid::text, last_id FROM replication_state WHERE target = $1"
ENSURE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id) VALUES ($1, '0', 0)
ON CONFLICT (target) DO NOTHING
"""
LOCK_CHECKPOINT = """
SELECT txid::text, last_id FROM replication_state WHERE target = $1 FOR UPDATE
"""
SAVE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (target) DO UPDATE
SET txid = excluded.txid, last_id = excluded.last_id, updated_at = excluded.updated_at
"""
HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
# The last row of the next block: the block is every row after the checkpoint up to it.
BLOCK_END = """
SELECT txid::text, id FROM (
    SELECT txid, id FROM events
    WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND txid < $3::text::xid8
    ORDER BY txid, id
    LIMIT $4
) block
ORDER BY txid DESC, id DESC
LIMIT 1
"""
BLOCK = "(txid, id) > ($1::text::xid8, $2::bigint) AND (txid, id) <= ($3::text::xid8, $4::bigint)"
REGISTER_USERS = f"""
INSERT INTO user_ids (user_id)
SELECT DISTINCT user_id FROM events WHERE {BLOCK}
ORDER BY 1
ON CONFLICT (user_id) DO NOTHING
"""
# PostgreSQL does the heavy part: one row per (hour, event, channel) with its user ids.
AGGREGATE_BLOCK = f"""
SELECT date_trunc('hour', e.ts AT TIME ZONE 'UTC') AS hour, e.event_name, e.channel,
       count(*) AS events, array_agg(u.uid) AS uids
FROM events e JOIN user_ids u ON u.user_id = e.user_id
WHERE {BLOCK}
GROUP BY 1, 2, 3
"""
READ_ROLLUPS = """
SELECT r.grain, r.level, r.bucket AT TIME ZONE 'UTC', r.event_name, r.channel, r.events, r.users
FROM rollups r
JOIN unnest($1::smallint[], $2::smallint[], $3::timestamp[], $4::text[], $5::text[])
     AS k(grain, level, bucket, event_name, channel)
  ON r.grain = k.grain AND r.level = k.level AND r.bucket = k.bucket AT TIME ZONE 'UTC'
 AND r.event_name = k.event_name AND r.channel = k.channel
"""
WRITE_ROLLUPS = """
INSERT INTO rollups (grain, level, bucket, event_name, channel, events, users_count, users)
SELECT grain, level, bucket AT TIME ZONE 'UTC', event_name, channel, events, users_count, users
FROM unnest($1::smallint[], $2::smallint[], $3::timestamp[], $4::text[], $5::text[],
            $6::bigint[], $7::integer[], $8::bytea[])
     AS k(grain, level, bucket, event_name, channel, events, users_count, users)
ON CONFLICT (grain, level, event_name, bucket, channel) DO UPDATE
SET events = excluded.events, users_count = excluded.users_count, users = excluded.users
"""

# (grain, level, bucket as naive UTC, event_name, channel)
Key = tuple[int, int, datetime, str, str]


@dataclass
class Aggregate:
    events: int
    users: BitMap


def roll_up(rows: Iterable[tuple[datetime, str, str, int, list[int]]]) -> dict[Key, Aggregate]:
    """Fold (hour, event_name, channel, events, uids) rows into every grain and level."""
    out: dict[Key, Aggregate] = {}
    for hour, name, channel, events, uids in rows:
        users = BitMap(uids)
        day = hour.replace(hour=0)
        for level, (keep_name, keep_channel) in LEVELS.items():
            for grain, bucket in ((HOUR, hour), (DAY, day)):
                key = (
                    grain,
                    level,
                    bucket,
                    name if keep_name else "",
                    channel if keep_channel else "",
                )
                found = out.get(key)
                if found is None:
                    out[key] = Aggregate(events, BitMap(users))
                else:
                    found.events += events
                    found.users |= users
    return out


async def load_checkpoint(connection: asyncpg.Connection) -> tuple[str, int]:
    """The (txid, id) of the last event folded into the rollups."""
    row = await connection.fetchrow(LOAD_CHECKPOINT, TARGET)
    return (row[0], row[1]) if row else ("0", 0)


async def refresh_block(connection: asyncpg.Connection, *, max_rows: int) -> int:
    """Fold the next block of committed events into the rollups; return the rows folded.

    The checkpoint row is locked for the whole transaction, so two callers (a manual
    rebuild and a running service, say) take turns instead of folding a block twice.
    """
    async with connection.transaction():
        await connection.execute(ENSURE_CHECKPOINT, TARGET)
        txid, last_id = await connection.fetchrow(LOCK_CHECKPOINT, TARGET)
        horizon = await connection.fetchval(HORIZON)
        end = await connection.fetchrow(BLOCK_END, txid, last_id, horizon, max_rows)
        if end is None:
            return 0
        block = (txid, last_id, end[0], end[1])
        await connection.execute(REGISTER_USERS, *block)
        fine = await connection.fetch(AGGREGATE_BLOCK, *block)
        await _merge(connection, roll_up(tuple(r) for r in fine))
        await connection.execute(SAVE_CHECKPOINT, TARGET, end[0], end[1])
    return sum(r["events"] for r in fine)


async def _merge(connection: asyncpg.Connection, changes: dict[Key, Aggregate]) -> None:
    keys = list(changes)
    columns: list[list[Any]] = [list(c) for c in zip(*keys, strict=True)]
    for row in await connection.fetch(READ_ROLLUPS, *columns):
        key = (row[0], row[1], row[2], row[3], row[4])
        change = changes[key]
        change.events += row[5]
        change.users |= BitMap.deserialize(row[6])
    values = [changes[k] for k in keys]
    await connection.execute(
        WRITE_ROLLUPS,
        *columns,
        [v.events for v in values],
        [len(v.users) for v in values],
        [v.users.serialize() for v in values],
    )


async def rebuild(connection: asyncpg.Connection, *, block_rows: int = 2_000_000) -> int:
    """Drop the rollups and fold every event in again (event-metrics rebuild-rollups).

    Safe while the service runs: DELETE (not TRUNCATE) keeps concurrent /metrics
    snapshots consistent, and the checkpoint row lock makes the refresher and this loop
    fold alternate blocks rather than the same one twice.
    """
    async with connection.transaction():
        await connection.execute("DELETE FROM rollups")
        await connection.execute("DELETE FROM replication_state WHERE target = $1", TARGET)
    total = 0
    while (folded := await refresh_block(connection, max_rows=block_rows)) > 0:
        total += folded
        log.info("rebuilt rollups for %d events", total)
    return total


class RollupRefresher:
    """Background task: keeps the rollups current while it holds the refresher lock."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = "starting"
        self.rows_folded = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "rows_folded": self.rows_folded}

    async def run(self) -> None:
        """Refresh until stop(); survive PostgreSQL outages by retrying."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                await self._run_with_lock()
                delay = 0.1
            except TRANSIENT_ERRORS as exc:
                self.state = "retrying"
                log.warning("rollup refresh paused: %s; retrying in %.1fs", exc, delay)
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _run_with_lock(self) -> None:
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            while not await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", REFRESHER_LOCK_ID
            ):
                self.state = "standby"
                if await self._sleep(self.settings.rollup_interval_ms / 1000):
                    return
            self.state = "running"
            while not self._stopping.is_set():
                folded = await refresh_block(connection, max_rows=self.settings.rollup_block_rows)
                self.rows_folded += folded
                if folded < self.settings.rollup_block_rows and await self._sleep(
                    self.settings.rollup_interval_ms / 1000
                ):
                    return
        finally:
            await connection.close()

    async def _sleep(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True
