"""ClickHouse: the schema the service applies on start, in the shape the engine allows,
block inserts, and the clients /metrics reads through (clickhouse_client.py is the seam
to a server or to chdb).

Two shapes of the events table (docs/architecture.md, "Exactly-once into ClickHouse"):

* engines with insert deduplication tokens (22.3 and later, chdb): a plain `MergeTree`
  that remembers the tokens of its last `DEDUPLICATION_WINDOW` blocks. The replicator
  names each block by its checkpoint range, so a replayed block is dropped and every row
  is stored once: reads need no FINAL.
* ClickHouse 18.16 (no tokens): a `ReplacingMergeTree`, read with FINAL, which counts
  each event once even while a replayed block's repeats are not merged away yet.

Readers ask the table which shape it has (`reads_final`); an existing table of the old
shape on a current engine is converted on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from event_metrics.clickhouse_client import ClickHouseClient, Rows, connect
from event_metrics.schema import CLICKHOUSE_TYPES, MIRRORED_COLUMNS

log = logging.getLogger(__name__)

# The events table is built from the schema definition: a fresh table has every column,
# and a column the definition gained since is added to an existing table on start.
# Changes ALTER cannot make (a new sorting key) are rebuild steps in MIGRATIONS, applied
# once, in order, and recorded in schema_version. Everything here must run on ClickHouse
# 18.16 and on current releases (tests/test_clickhouse_dialect.py runs it on both).
#
# ReplacingMergeTree collapses rows with equal sorting keys. A row's (event_name, ts) is a
# function of its (project_id, idempotency_key) (PostgreSQL stores each once), so equal
# keys mean equal sorting keys, and a repeat lands in the same monthly partition as its
# original. The project comes first: every query reads one project.
SORTING_KEY = ("project_id", "event_name", "ts", "idempotency_key")
# insert_deduplication_token arrived in ClickHouse 22.2 (non_replicated_deduplication_window
# in 20.x); 22.3 is the first LTS release with both.
EXACTLY_ONCE_SINCE = (22, 3)
# Blocks whose tokens a table remembers. A replay comes right after the block it repeats
# (one per month the block spans), so a few would do; 1000 also covers a replicator that
# lost its lock while its insert was in flight, for 1000 blocks (~17 min when caught up).
DEDUPLICATION_WINDOW = 1000


def exactly_once(client: ClickHouseClient) -> bool:
    """Whether the engine drops a block whose insert_deduplication_token it has seen."""
    return client.version() >= EXACTLY_ONCE_SINCE


def events_ddl(table: str = "events", *, exactly_once: bool = False) -> str:
    """CREATE TABLE for the events table (or a copy of it under another name), in the
    exactly-once shape (MergeTree with a deduplication window) or 18.16's."""
    engine = "MergeTree()" if exactly_once else "ReplacingMergeTree()"
    settings = (
        f" SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        if exactly_once
        else ""
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        + ", ".join(f"{name} {CLICKHOUSE_TYPES[name]}" for name in MIRRORED_COLUMNS)
        + f") ENGINE = {engine} PARTITION BY toYYYYMM(ts) "
        + f"ORDER BY ({', '.join(SORTING_KEY)})"
        + settings
    )


EVENTS_DDL = events_ddl()
EXACTLY_ONCE_EVENTS_DDL = events_ddl(exactly_once=True)
EVENT_COLUMNS = """
SELECT name FROM system.columns WHERE database = currentDatabase() AND table = %(table)s
"""
# On a cluster `events` is a Distributed table over every node's LOCAL_TABLE
# (clickhouse_cluster.py).
LOCAL_TABLE = "events_local"
EVENTS_ENGINE = """
SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = %(table)s
"""


def reads_final(client: ClickHouseClient, table: str = "events") -> bool | None:
    """Whether the events `table` must be read with FINAL (a ReplacingMergeTree), or None
    when there is no such table yet."""
    rows = client.execute(EVENTS_ENGINE, {"table": table})
    if rows and rows[0][0] == "Distributed":
        # A cluster: the shards' local tables hold the rows, and their shape decides. Every
        # shard takes the shape its engine allows (apply_schema), the same on all of them.
        rows = client.execute(EVENTS_ENGINE, {"table": LOCAL_TABLE})
        if not rows:  # a node that only routes queries holds no local table
            return not exactly_once(client)
    return None if not rows else rows[0][0] != "MergeTree"


def _rebuild(client: ClickHouseClient, table: str, backfill: dict[str, str]) -> None:
    """Copy the events `table` into a table of the current shape, then swap the two.

    Columns the old table lacks are filled from `backfill` (SQL expressions) or left to
    their type's default. A ReplacingMergeTree is read with FINAL, so the copy holds each
    event once. Rows arriving meanwhile wait: the replicator itself calls this before it
    copies anything.
    """
    present = {row[0] for row in client.execute(EVENT_COLUMNS, {"table": table})}
    columns = [name for name in MIRRORED_COLUMNS if name in present or name in backfill]
    values = [name if name in present else f"{backfill[name]} AS {name}" for name in columns]
    final = " FINAL" if reads_final(client, table) else ""
    client.execute(f"DROP TABLE IF EXISTS {table}_rebuild")
    client.execute(events_ddl(f"{table}_rebuild", exactly_once=exactly_once(client)))
    # Every block of the copy holds other ids: none is a repeat the window would drop.
    client.execute(
        f"INSERT INTO {table}_rebuild ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {table}{final}"
    )
    client.execute(f"RENAME TABLE {table} TO {table}_before_rebuild, {table}_rebuild TO {table}")
    client.execute(f"DROP TABLE {table}_before_rebuild")


# A step gets the client and the name of the table that stores events there: `events`
# on a single node, the local table on each node of a cluster (clickhouse_cluster.py).
Step = Callable[[ClickHouseClient, str], None]
# (version, step on an existing table). A new table is created in the latest shape, and
# every step is recorded as applied without running.
MIGRATIONS: tuple[tuple[int, Step], ...] = (
    (1, lambda client, table: None),  # the first table, as EVENTS_DDL made it
    # Projects: existing events belong to the 'default' project (id 1, alembic 0003), and
    # the sorting key starts with the project.
    (2, lambda client, table: _rebuild(client, table, {"project_id": "toUInt32(1)"})),
)

CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (version UInt32, applied_at DateTime('UTC'))
ENGINE = TinyLog
"""

INSERT = f"INSERT INTO events ({', '.join(MIRRORED_COLUMNS)}) VALUES"
# On a cluster `events` is a Distributed table: a synchronous insert returns once every
# shard has its rows, so the checkpoint saved after it never runs ahead of a shard. (The
# default queues the rows on the entry node's disk and acknowledges at once.) A single
# node ignores it.
INSERT_SETTINGS = {"insert_distributed_sync": 1}


def apply_schema(client: ClickHouseClient, table: str = "events") -> list[int]:
    """Create or evolve the ClickHouse schema of the node, its events stored in `table`;
    return the versions applied now."""
    client.execute(CREATE_SCHEMA_VERSION)
    applied = {row[0] for row in client.execute("SELECT version FROM schema_version")}
    fresh = not client.execute(f"EXISTS TABLE {table}")[0][0]
    done = []
    for version, step in MIGRATIONS:
        if version in applied:
            continue
        if not fresh:  # a new table already has the shape the step would give it
            log.info("ClickHouse schema version %d: migrating the table %s", version, table)
            step(client, table)
        client.execute(
            "INSERT INTO schema_version (version, applied_at) SELECT %(v)s, now()", {"v": version}
        )
        done.append(version)
        log.info("ClickHouse schema version %d applied", version)
    client.execute(events_ddl(table, exactly_once=exactly_once(client)))
    add_missing_columns(client, table)
    if exactly_once(client) and reads_final(client, table):
        # Made by an older version of the service, or on an older ClickHouse: the engine
        # now can store each row once, so the table is rebuilt in that shape.
        log.info("ClickHouse table %s: converting to MergeTree with insert deduplication", table)
        _rebuild(client, table, {})
        log.info("ClickHouse table %s: converted, read without FINAL from now on", table)
    return done


def add_missing_columns(client: ClickHouseClient, table: str) -> None:
    """Add to `table` the columns of MIRRORED_COLUMNS it lacks."""
    present = {row[0] for row in client.execute(EVENT_COLUMNS, {"table": table})}
    for name in MIRRORED_COLUMNS:
        if name not in present:
            client.execute(f"ALTER TABLE {table} ADD COLUMN {name} {CLICKHOUSE_TYPES[name]}")
            log.info("ClickHouse table %s: column %s added", table, name)


def insert_columns(
    client: ClickHouseClient, columns: Sequence[Sequence[Any]], *, token: str | None = None
) -> None:
    """Insert one block given column-wise in MIRRORED_COLUMNS order (times as seconds
    since 1970). With a token, an engine that has seen it drops the block (a replay); on
    a cluster the Distributed table passes the token on with each shard's part of the
    block, and a replay splits the same way, so every shard drops its repeat."""
    settings: dict[str, int | str] = dict(INSERT_SETTINGS)
    if token and exactly_once(client):
        settings["insert_deduplication_token"] = token
    client.insert("events", MIRRORED_COLUMNS, columns, settings=settings)


def insert_anew(client: ClickHouseClient, columns: Sequence[Sequence[Any]]) -> None:
    """Insert rows that must go in even if an identical block went in before (verify's
    repair, after it deleted the wrong versions): no deduplication."""
    settings: dict[str, int | str] = dict(INSERT_SETTINGS)
    if exactly_once(client):
        settings["insert_deduplicate"] = 0
    client.insert("events", MIRRORED_COLUMNS, columns, settings=settings)


class ClickHousePool:
    """A few clients for /metrics (a client runs one query at a time), and the shape of
    the events table they read."""

    def __init__(self, url: str, *, size: int, timeout_s: float) -> None:
        self._idle: asyncio.Queue[ClickHouseClient] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(connect(url, timeout_s=timeout_s))
        self._final: bool | None = None

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[ClickHouseClient]:
        client = await self._idle.get()
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def execute(self, sql: str, params: dict[str, Any]) -> Rows:
        """Run a query in a worker thread on an idle client."""
        async with self.client() as client:
            return await asyncio.to_thread(client.execute, sql, params)

    async def reads_final(self) -> bool | None:
        """Whether queries read events with FINAL (None: no events table yet). Kept once
        known: a table only ever changes from needing FINAL to not (a conversion), and a
        query that then uses FINAL fails with ILLEGAL_FINAL and calls forget_shape()."""
        if self._final is None:
            async with self.client() as client:
                self._final = await asyncio.to_thread(reads_final, client)
        return self._final

    def forget_shape(self) -> None:
        self._final = None

    async def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
