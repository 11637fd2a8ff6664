"""The stored event, defined once: its columns in PostgreSQL and in ClickHouse, the
dimensions /metrics groups by, and the rollup grains and levels derived from them.

Every column list in the code (the writers' staging table and INSERTs, the replicator's
SELECT, ClickHouse's table and inserts, the rollups' SQL) is built from `Row` here, and
so are the rows themselves: the writers build and send them by field name. Adding a
column is a line of `Row` plus a migration, a dimension its name in `DIMENSIONS` too
(docs/architecture.md walks through one; tests/integration/test_new_column.py does it).
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, NamedTuple

import msgspec


class Types(NamedTuple):
    """A column's type in each engine."""

    postgres: str
    clickhouse: str


class Row(msgspec.Struct, frozen=True, gc=False):
    """An event as a writer stores it (PostgreSQL adds `id` and `txid` itself).

    Each field is a column: its name, its Python type and its type in both engines, in one
    line. Rows are built by keyword and read by name; the order of the fields is the order
    of every derived column list. A struct, not a NamedTuple: nothing can unpack it by
    position, and building one by keyword costs less than a NamedTuple by position
    (0.15 against 0.5 us, docs/benchmarks.md). No field refers to another object, so the
    garbage collector need not track rows (gc=False).
    """

    project_id: Annotated[int, Types("integer", "UInt32")]
    idempotency_key: Annotated[str, Types("text", "String")]
    event_name: Annotated[str, Types("text", "String")]
    user_id: Annotated[str, Types("text", "String")]
    channel: Annotated[str, Types("text", "String")]
    ts: Annotated[datetime, Types("timestamptz", "DateTime('UTC')")]
    received_at: Annotated[datetime, Types("timestamptz", "DateTime('UTC')")]
    properties: Annotated[str | None, Types("jsonb", "String")]  # JSON text, as sent


def _column_types() -> dict[str, Types]:
    hints = typing.get_type_hints(Row, include_extras=True)
    return {
        name: next(meta for meta in hints[name].__metadata__ if isinstance(meta, Types))
        for name in Row.__struct_fields__
    }


COLUMN_TYPES: dict[str, Types] = _column_types()

COLUMNS: tuple[str, ...] = Row.__struct_fields__
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
