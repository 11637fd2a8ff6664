"""ClickHouse: connections, the schema the service applies on start, and block inserts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

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


def events_ddl(table: str = "events") -> str:
    """CREATE TABLE for the events table (or a copy of it under another name)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        + ", ".join(f"{name} {CLICKHOUSE_TYPES[name]}" for name in MIRRORED_COLUMNS)
        + ") ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) "
        + f"ORDER BY ({', '.join(SORTING_KEY)})"
    )


EVENTS_DDL = events_ddl()
EVENT_COLUMNS = """
SELECT name FROM system.columns WHERE database = currentDatabase() AND table = %(table)s
"""


def _rebuild(client: Client, table: str, backfill: dict[str, str]) -> None:
    """Copy the events `table` into a table of the current shape, then swap the two.

    Columns the old table lacks are filled from `backfill` (SQL expressions) or left to
    their type's default. Rows arriving meanwhile wait: the replicator itself calls this
    before it copies anything.
    """
    present = {row[0] for row in client.execute(EVENT_COLUMNS, {"table": table})}
    columns = [name for name in MIRRORED_COLUMNS if name in present or name in backfill]
    values = [name if name in present else f"{backfill[name]} AS {name}" for name in columns]
    client.execute(f"DROP TABLE IF EXISTS {table}_rebuild")
    client.execute(events_ddl(f"{table}_rebuild"))
    client.execute(
        f"INSERT INTO {table}_rebuild ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {table}"
    )
    client.execute(f"RENAME TABLE {table} TO {table}_before_rebuild, {table}_rebuild TO {table}")
    client.execute(f"DROP TABLE {table}_before_rebuild")


# A step gets the client and the name of the table that stores events there: `events`
# on a single node, the local table on each node of a cluster (clickhouse_cluster.py).
Step = Callable[[Client, str], None]
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

# Errors that mean "ClickHouse is not there right now", worth a retry.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    TimeoutError,
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
)


def connect(url: str, *, timeout_s: float = 10) -> Client:
    """A clickhouse-driver client for clickhouse://user:pass@host:port/database."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    # Timeouts from the URL win; otherwise a down server fails fast instead of hanging.
    options.setdefault("connect_timeout", str(min(timeout_s, 5)))
    options.setdefault("send_receive_timeout", str(timeout_s))
    return Client.from_url(urlunsplit(parts._replace(query=urlencode(options))))


def apply_schema(client: Client, table: str = "events") -> list[int]:
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
    client.execute(events_ddl(table))
    add_missing_columns(client, table)
    return done


def add_missing_columns(client: Client, table: str) -> None:
    """Add to `table` the columns of MIRRORED_COLUMNS it lacks."""
    present = {row[0] for row in client.execute(EVENT_COLUMNS, {"table": table})}
    for name in MIRRORED_COLUMNS:
        if name not in present:
            client.execute(f"ALTER TABLE {table} ADD COLUMN {name} {CLICKHOUSE_TYPES[name]}")
            log.info("ClickHouse table %s: column %s added", table, name)


def insert_columns(client: Client, columns: Sequence[Sequence[Any]]) -> None:
    """Insert one block given column-wise in MIRRORED_COLUMNS order (ts: aware datetimes)."""
    client.execute(INSERT, list(columns), columnar=True, settings=INSERT_SETTINGS)


class ClickHousePool:
    """A few clients for /metrics; clickhouse-driver clients are not safe to share."""

    def __init__(self, url: str, *, size: int, timeout_s: float) -> None:
        self._idle: asyncio.Queue[Client] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(connect(url, timeout_s=timeout_s))

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        client = await self._idle.get()
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def execute(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a query in a worker thread on an idle client."""
        async with self.client() as client:
            rows: list[tuple[Any, ...]] = await asyncio.to_thread(client.execute, sql, params)
            return rows

    async def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().disconnect()
