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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from pyroaring import BitMap

from event_metrics.checkpoint import NEXT_ROWS, after, horizon, save_checkpoint, up_to
from event_metrics.follower import Follower
from event_metrics.schema import DAY, DIMENSIONS, HOUR, LEVELS, ROLLUP_TARGET
from event_metrics.settings import LagSettings, RollupSettings

log = logging.getLogger(__name__)

TARGET = ROLLUP_TARGET
REFRESHER_LOCK_ID = 0x45564D55  # "EVMU"

_DIMS = ", ".join(DIMENSIONS)
_E_DIMS = ", ".join(f"e.{d}" for d in DIMENSIONS)
_R_DIMS = ", ".join(f"r.{d}" for d in DIMENSIONS)
_K_DIMS = ", ".join(f"${n}::text[]" for n in range(5, 5 + len(DIMENSIONS)))
_MATCH_DIMS = "".join(f" AND r.{d} = k.{d}" for d in DIMENSIONS)

ENSURE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id) VALUES ($1, '0', 0)
ON CONFLICT (target) DO NOTHING
"""
LOCK_CHECKPOINT = """
SELECT txid::text, last_id FROM replication_state WHERE target = $1 FOR UPDATE
"""
# The last row of the next block: the block is every row after the checkpoint up to it.
# Sorted by the xid8 column, not by its text (which made blocks end early at 10^n).
BLOCK_END = f"""
SELECT block.txid::text AS txid_text, block.id FROM (SELECT txid, id {NEXT_ROWS}) block
ORDER BY block.txid DESC, block.id DESC
LIMIT 1
"""
BLOCK = f"{after(1)} AND {up_to(3)}"
# Users get dense ids per project: a project's bitmaps only ever hold its own users.
REGISTER_USERS = f"""
INSERT INTO user_ids (project_id, user_id)
SELECT DISTINCT project_id, user_id FROM events WHERE {BLOCK}
ORDER BY 1, 2
ON CONFLICT (project_id, user_id) DO NOTHING
"""
# PostgreSQL does the heavy part: one row per (project, hour, dimension values) with its
# user ids.
AGGREGATE_BLOCK = f"""
SELECT e.project_id, date_trunc('hour', e.ts AT TIME ZONE 'UTC') AS hour, {_E_DIMS},
       count(*) AS events, array_agg(u.uid) AS uids
FROM events e JOIN user_ids u ON u.project_id = e.project_id AND u.user_id = e.user_id
WHERE {BLOCK}
GROUP BY e.project_id, hour, {_E_DIMS}
"""
READ_ROLLUPS = f"""
SELECT r.project_id, r.grain, r.level, r.bucket AT TIME ZONE 'UTC', {_R_DIMS}, r.events,
       r.users
FROM rollups r
JOIN unnest($1::integer[], $2::smallint[], $3::smallint[], $4::timestamp[], {_K_DIMS})
     AS k(project_id, grain, level, bucket, {_DIMS})
  ON r.project_id = k.project_id AND r.grain = k.grain AND r.level = k.level
 AND r.bucket = k.bucket AT TIME ZONE 'UTC' {_MATCH_DIMS}
"""
_N = 5 + len(DIMENSIONS)  # the first parameter after the key columns
WRITE_ROLLUPS = f"""
INSERT INTO rollups (project_id, grain, level, bucket, {_DIMS}, events, users_count, users)
SELECT project_id, grain, level, bucket AT TIME ZONE 'UTC', {_DIMS}, events, users_count, users
FROM unnest($1::integer[], $2::smallint[], $3::smallint[], $4::timestamp[], {_K_DIMS},
            ${_N}::bigint[], ${_N + 1}::integer[], ${_N + 2}::bytea[])
     AS k(project_id, grain, level, bucket, {_DIMS}, events, users_count, users)
ON CONFLICT ON CONSTRAINT rollups_pkey DO UPDATE
SET events = excluded.events, users_count = excluded.users_count, users = excluded.users
"""

# (project, grain, level number, bucket as naive UTC, *dimension values in DIMENSIONS order)
Key = tuple[Any, ...]


@dataclass
class Aggregate:
    events: int
    users: BitMap


# Per level, which of a row's dimension values it keeps (the others become '').
_KEEPS = [(level.number, [d in level.dimensions for d in DIMENSIONS]) for level in LEVELS]


def roll_up(rows: Iterable[Sequence[Any]]) -> dict[Key, Aggregate]:
    """Fold (project, hour, *dimension values, events, uids) rows into every grain and
    level."""
    out: dict[Key, Aggregate] = {}
    for project, hour, *values, events, uids in rows:
        users = BitMap(uids)
        day = hour.replace(hour=0)
        for level, keeps in _KEEPS:
            kept = tuple(v if keep else "" for v, keep in zip(values, keeps, strict=True))
            for grain, bucket in ((HOUR, hour), (DAY, day)):
                key = (project, grain, level, bucket, *kept)
                found = out.get(key)
                if found is None:
                    out[key] = Aggregate(events, BitMap(users))
                else:
                    found.events += events
                    found.users |= users
    return out


async def refresh_block(connection: asyncpg.Connection, *, max_rows: int) -> int:
    """Fold the next block of committed events into the rollups; return the rows folded.

    The checkpoint row is locked for the whole transaction, so two callers (a manual
    rebuild and a running service, say) take turns instead of folding a block twice.
    """
    async with connection.transaction():
        await connection.execute(ENSURE_CHECKPOINT, TARGET)
        txid, last_id = await connection.fetchrow(LOCK_CHECKPOINT, TARGET)
        end = await connection.fetchrow(
            BLOCK_END, txid, last_id, await horizon(connection), max_rows
        )
        if end is None:
            return 0
        block = (txid, last_id, end[0], end[1])
        await connection.execute(REGISTER_USERS, *block)
        fine = [tuple(r) for r in await connection.fetch(AGGREGATE_BLOCK, *block)]
        # Bitmap work is CPU-bound: off the event loop, so requests are not held up.
        changes = await asyncio.to_thread(roll_up, fine)
        await _merge(connection, changes)
        await save_checkpoint(connection, TARGET, (end[0], end[1]))
    return sum(events for *_, events, _uids in fine)


async def _merge(connection: asyncpg.Connection, changes: dict[Key, Aggregate]) -> None:
    keys = list(changes)
    columns: list[list[Any]] = [list(c) for c in zip(*keys, strict=True)]
    existing = await connection.fetch(READ_ROLLUPS, *columns)
    values = await asyncio.to_thread(_combine, keys, changes, existing)
    await connection.execute(WRITE_ROLLUPS, *columns, *values)


def _combine(
    keys: list[Key], changes: dict[Key, Aggregate], existing: list[asyncpg.Record]
) -> tuple[list[int], list[int], list[bytes]]:
    """Add the stored rows to the changes: new events, cardinalities and bitmaps."""
    for *key, events, users in existing:
        change = changes[tuple(key)]
        change.events += events
        change.users |= BitMap.deserialize(users)
    merged = [changes[k] for k in keys]
    return (
        [m.events for m in merged],
        [len(m.users) for m in merged],
        [m.users.serialize() for m in merged],
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


class RollupRefresher(Follower):
    """Background task: keeps the rollups current while it holds the refresher lock."""

    lock_id = REFRESHER_LOCK_ID
    name = "rollup refresher"
    target = TARGET

    def __init__(
        self,
        database_url: str,
        settings: RollupSettings,
        *,
        lag: LagSettings = LagSettings(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__(
            database_url,
            interval_s=settings.interval_s,
            retry_max_s=settings.retry_max_s,
            batch_rows=settings.block_rows,
            lag_settings=lag,
        )

    @property
    def rows_folded(self) -> int:
        return self.rows_done

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rows_folded": self.rows_folded}

    async def work(self, connection: asyncpg.Connection) -> None:
        while not self.stopping:
            started = time.time()
            folded = await refresh_block(connection, max_rows=self.batch_rows)
            self.finish_cycle(folded, started)
            self.backoff.reset()
            if folded < self.batch_rows and await self.sleep(self.interval_s):
                return
