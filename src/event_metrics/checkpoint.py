"""The gap-free (txid, id) watermark over the events table: the horizon, a follower's
checkpoint (load and save), and the SQL that compares a row with a checkpoint.

Every event row carries the id of the transaction that inserted it. Rows with
`txid < pg_snapshot_xmin(pg_current_snapshot())` belong to transactions that have ended,
so that set is final; a follower (the ClickHouse replicator, the rollup refresher) reads
rows after its checkpoint in (txid, id) order strictly below that horizon and can never
skip a row that commits late. The argument is written out in docs/architecture.md.

Shared vocabulary: the followers that write checkpoints and the readers that take them
(/metrics from rollups, the lag, verify) all import it, and it imports nothing of ours.
"""

from __future__ import annotations

import asyncpg

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


def _position(at: int) -> str:
    # A checkpoint travels as two parameters: its txid as text (asyncpg has no xid8
    # codec) and its id; the row comparison then uses the (txid, id) index.
    return f"(${at}::text::xid8, ${at + 1}::bigint)"


def after(at: int = 1, table: str = "") -> str:
    """SQL: the row (of `table`, an alias, or unqualified) comes after the checkpoint
    passed as parameters $at and $at+1."""
    prefix = f"{table}." if table else ""
    return f"({prefix}txid, {prefix}id) > {_position(at)}"


def up_to(at: int = 1, table: str = "") -> str:
    """SQL: the row comes at or before the checkpoint passed as parameters $at, $at+1."""
    prefix = f"{table}." if table else ""
    return f"({prefix}txid, {prefix}id) <= {_position(at)}"


AFTER = after()
UP_TO = up_to()
# The next rows a follower handles: after its checkpoint ($1, $2) and below the horizon
# ($3), in (txid, id) order, at most $4. Ordered by the table's columns: a follower that
# selects the txid as text under its own name must not sort by the text ('10000' before
# '9995' moved a checkpoint past rows never copied).
NEXT_ROWS = f"""
FROM events
WHERE {AFTER} AND txid < $3::text::xid8
ORDER BY events.txid, events.id
LIMIT $4
"""


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
