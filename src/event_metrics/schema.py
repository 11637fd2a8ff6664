"""The stored event, defined once: its columns in PostgreSQL and in ClickHouse, the
dimensions /metrics groups by, and the rollup grains and levels derived from them.

Every column list in the code (the writers' staging table and INSERTs, the replicator's
SELECT, ClickHouse's table and inserts, the rollups' SQL) is built from `Row` and
`COLUMN_TYPES` here. Adding a column or a dimension is an entry here plus a migration
(docs/architecture.md walks through one).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class Row(NamedTuple):
    """An event as a writer stores it (PostgreSQL adds `id` and `txid` itself)."""

    project_id: int
    idempotency_key: str
    event_name: str
    user_id: str
    channel: str
    ts: datetime
    received_at: datetime
    properties: str | None  # JSON text, as sent


class Types(NamedTuple):
    postgres: str
    clickhouse: str


COLUMN_TYPES: dict[str, Types] = {
    "project_id": Types("integer", "UInt32"),
    "idempotency_key": Types("text", "String"),
    "event_name": Types("text", "String"),
    "user_id": Types("text", "String"),
    "channel": Types("text", "String"),
    "ts": Types("timestamptz", "DateTime('UTC')"),
    "received_at": Types("timestamptz", "DateTime('UTC')"),
    "properties": Types("jsonb", "String"),
}
if tuple(COLUMN_TYPES) != Row._fields:  # pragma: no cover - a mistake in this file
    raise TypeError("COLUMN_TYPES must name Row's fields, in order")

COLUMNS: tuple[str, ...] = Row._fields
# What ClickHouse holds: PostgreSQL's id (the replicator copies it) and a Row.
MIRRORED_COLUMNS: tuple[str, ...] = ("id", *COLUMNS)
# What identifies one event: an idempotency key is unique within its project.
EVENT_KEY: tuple[str, ...] = ("project_id", "idempotency_key")
CLICKHOUSE_TYPES: dict[str, str] = {"id": "UInt64"} | {
    name: types.clickhouse for name, types in COLUMN_TYPES.items()
}

# What /metrics may group by; each is a text column of Row ('' when absent). Requests name
# them; SQL takes the names only from this tuple, never from the request.
DIMENSIONS: tuple[str, ...] = ("channel", "event_name")


# --- rollups -----------------------------------------------------------------------------

HOUR, DAY = 0, 1  # rollup grains: UTC hours and UTC days


class Level(NamedTuple):
    """A rollup level: the rows that keep exactly `dimensions` (the others rolled away,
    stored as ''). `number` is what the rollups table stores."""

    number: int
    dimensions: frozenset[str]


def _levels() -> tuple[Level, ...]:
    # A level's number has bit n set when DIMENSIONS[n] is rolled away, so appending a
    # dimension leaves the numbers of existing levels as they were. With (channel,
    # event_name): 0 keeps both, 1 keeps event_name, 2 keeps channel, 3 keeps neither.
    return tuple(
        Level(mask, frozenset(d for n, d in enumerate(DIMENSIONS) if not mask & (1 << n)))
        for mask in range(1 << len(DIMENSIONS))
    )


LEVELS: tuple[Level, ...] = _levels()


def level_for(dimensions: frozenset[str] | set[str]) -> Level:
    """The rollup level that keeps exactly these dimensions."""
    for level in LEVELS:
        if level.dimensions == dimensions:
            return level
    raise ValueError(f"no rollup level keeps exactly {sorted(dimensions)}")


# The checkpoint rows in replication_state of the two followers of the events table.
ROLLUP_TARGET = "rollups"
CLICKHOUSE_TARGET = "clickhouse"
