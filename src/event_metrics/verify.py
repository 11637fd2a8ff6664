"""`event-metrics verify`: is the ClickHouse mirror right? Compare it with PostgreSQL.

Each row's content (every mirrored column) is written as one canonical text, the same in
both engines: numbers in decimal, times as whole seconds since 1970 (what a ClickHouse
DateTime holds), every string and the properties' JSON text preceded by its length in
bytes, so no two different rows give the same text. Both engines summarise their events per
project, UTC day and event name: a count and two sums of 32-bit slices of md5(content).
Only rows up to the replicator's checkpoint are expected in ClickHouse; rows after it may
or may not be there yet (the copy is at-least-once), so a cell whose summaries differ is
then compared row by row, by key and md5(content): a key the checkpoint has passed that
ClickHouse lacks is missing, a key ClickHouse has and PostgreSQL does not is extra, and a
key whose content differs (a value changed, a column lost), or that ClickHouse holds twice
(under two sorting keys, or on two shards), is changed. ClickHouse is read with FINAL, as
every query reads it: the row version a query would see is what is compared.

On a cluster (clickhouse_cluster.py) the same statements read the Distributed table, and
each node is also asked for rows stored on a shard the sharding key does not place them
on: such a row reads right but would count its user on two shards, so it is changed too.

`--repair` deletes the extra and changed keys' row versions (on every node of a cluster,
and waits for the deletion), copies the missing and changed rows again (through the
Distributed table, onto their own shard), and verifies again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg

from event_metrics import clickhouse_cluster
from event_metrics.checkpoint import UP_TO, Checkpoint, load_checkpoint
from event_metrics.clickhouse import connect, insert_columns
from event_metrics.clickhouse_cluster import Store
from event_metrics.replicator import MIRRORED, TARGET
from event_metrics.schema import CLICKHOUSE_TYPES, COLUMN_TYPES, MIRRORED_COLUMNS

Cell = tuple[int, date, str]  # (project_id, UTC day, event_name)
Summary = tuple[int, int, int]  # (rows, sum of content hash slice 1, slice 2)


def _postgres_part(name: str) -> str:
    kind = COLUMN_TYPES[name].postgres if name in COLUMN_TYPES else "bigint"
    if kind == "timestamptz":
        return f"floor(extract(epoch FROM {name}))::bigint::text"
    if kind == "jsonb":
        text = f"coalesce({name}::text, '')"
        return f"octet_length({text})::text || ':' || {text}"
    if kind == "text":
        return f"octet_length({name})::text || ':' || {name}"
    return f"{name}::text"


def _clickhouse_part(name: str) -> str:
    kind = CLICKHOUSE_TYPES[name]
    if kind.startswith("DateTime"):
        return f"toString(toUInt32({name}))"
    if kind == "String":
        return f"toString(length({name})), ':', {name}"
    return f"toString({name})"


# The canonical text of a row, from schema.py's column list: a new column enters it.
POSTGRES_CONTENT = " || ',' || ".join(f"({_postgres_part(n)})" for n in MIRRORED_COLUMNS)
CLICKHOUSE_CONTENT = "concat(" + ", ',', ".join(_clickhouse_part(n) for n in MIRRORED_COLUMNS) + ")"

POSTGRES_SUMMARY = f"""
SELECT project_id, (ts AT TIME ZONE 'UTC')::date, event_name, count(*),
       sum(('x' || substr(content, 1, 8))::bit(32)::bigint),
       sum(('x' || substr(content, 9, 8))::bit(32)::bigint)
FROM (SELECT project_id, ts, event_name, md5({POSTGRES_CONTENT}) AS content
      FROM events WHERE {UP_TO}) AS hashed
GROUP BY 1, 2, 3
"""
CLICKHOUSE_SUMMARY = f"""
SELECT project_id, toDate(ts) AS day, event_name, count(),
       sum(reinterpretAsUInt32(reverse(substring(content, 1, 4)))),
       sum(reinterpretAsUInt32(reverse(substring(content, 5, 4))))
FROM (SELECT project_id, ts, event_name, MD5({CLICKHOUSE_CONTENT}) AS content FROM events FINAL)
GROUP BY project_id, day, event_name
"""
CELL = (
    "project_id = $3 AND ts >= $4::date::timestamp AT TIME ZONE 'UTC' "
    "AND ts < ($4::date + 1)::timestamp AT TIME ZONE 'UTC' AND event_name = $5"
)
POSTGRES_KEYS = f"""
SELECT idempotency_key, {UP_TO}, md5({POSTGRES_CONTENT}) FROM events WHERE {CELL}
"""
CLICKHOUSE_KEYS = f"""
SELECT idempotency_key, lower(hex(MD5({CLICKHOUSE_CONTENT}))) FROM events FINAL
WHERE project_id = %(project_id)s AND toDate(ts) = %(day)s AND event_name = %(event_name)s
"""
POSTGRES_ROWS = f"""
SELECT {MIRRORED} FROM events
WHERE {CELL} AND {UP_TO} AND idempotency_key = ANY($6::text[])
"""
# {table}: `events` on a single node, each node's local table on a cluster (a Distributed
# table cannot be altered so).
DELETE_KEYS = """
ALTER TABLE {table} DELETE
WHERE project_id = %(project_id)s AND toDate(ts) = %(day)s AND event_name = %(event_name)s
  AND idempotency_key IN %(keys)s
"""


@dataclass
class Difference:
    project_id: int
    day: date
    event_name: str
    postgres_rows: int
    clickhouse_rows: int
    missing: list[str] = field(default_factory=list)  # in PostgreSQL up to the checkpoint
    extra: list[str] = field(default_factory=list)  # in ClickHouse only
    changed: list[str] = field(default_factory=list)  # in both, with different content

    def as_dict(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "day": self.day.isoformat(),
            "event_name": self.event_name,
            "postgres_rows": self.postgres_rows,
            "clickhouse_rows": self.clickhouse_rows,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "changed": len(self.changed),
        }


@dataclass
class Report:
    cells: int
    differences: list[Difference]
    repaired: int = 0


async def compare(
    connection: asyncpg.Connection, client: Any, stores: list[Store] | None = None
) -> Report:
    """Summaries of both engines, then key by key wherever they differ (or, on a cluster's
    `stores`, wherever a row is on the wrong shard)."""
    misplaced = await asyncio.to_thread(clickhouse_cluster.misplaced, stores or [])
    checkpoint = await load_checkpoint(connection, TARGET)
    postgres = {
        (project, day, name): (rows, first, second)
        for project, day, name, rows, first, second in await connection.fetch(
            POSTGRES_SUMMARY, *checkpoint
        )
    }
    clickhouse = {
        (project, day, name): (rows, first, second)
        for project, day, name, rows, first, second in await asyncio.to_thread(
            client.execute, CLICKHOUSE_SUMMARY
        )
    }
    differences = []
    for cell in sorted(postgres.keys() | clickhouse.keys()):
        ours, theirs = postgres.get(cell, (0, 0, 0)), clickhouse.get(cell, (0, 0, 0))
        if ours == theirs and cell not in misplaced:
            continue
        difference = await _compare_rows(
            connection, client, cell, checkpoint, ours, theirs, misplaced.get(cell, set())
        )
        if difference.missing or difference.extra or difference.changed:
            differences.append(difference)
    return Report(cells=len(postgres.keys() | clickhouse.keys()), differences=differences)


async def _compare_rows(
    connection: asyncpg.Connection,
    client: Any,
    cell: Cell,
    checkpoint: Checkpoint,
    ours: Summary,
    theirs: Summary,
    misplaced: set[str],
) -> Difference:
    project_id, day, event_name = cell
    rows = await connection.fetch(POSTGRES_KEYS, *checkpoint, project_id, day, event_name)
    copied = {key: content for key, passed, content in rows if passed}
    anywhere = {key for key, _, _ in rows}
    params = {"project_id": project_id, "day": day, "event_name": event_name}
    versions = await asyncio.to_thread(client.execute, CLICKHOUSE_KEYS, params)
    mirrored = dict(versions)
    twice = {key for key, seen in Counter(key for key, _ in versions).items() if seen > 1}
    wrong = twice | misplaced
    return Difference(
        project_id=project_id,
        day=day,
        event_name=event_name,
        postgres_rows=ours[0],
        clickhouse_rows=theirs[0],
        missing=sorted(copied.keys() - mirrored.keys()),
        extra=sorted(mirrored.keys() - anywhere),
        changed=sorted(
            key
            for key in anywhere & mirrored.keys()
            if key in wrong or (key in copied and mirrored[key] != copied[key])
        ),
    )


async def repair(
    connection: asyncpg.Connection,
    client: Any,
    differences: list[Difference],
    stores: list[Store] | None = None,
) -> int:
    """Delete the extra and changed keys' row versions (in `stores`: the tables holding
    rows, by default the single node's), then copy the missing and changed rows again;
    return rows copied. The deletion goes by key, so it is waited for before the copies go
    in: it must take the wrong versions only."""
    stores = stores or [Store(client, "events", None)]
    for difference in differences:
        wrong = difference.extra + difference.changed
        if wrong:
            params = {
                "project_id": difference.project_id,
                "day": difference.day,
                "event_name": difference.event_name,
                "keys": tuple(wrong),
            }
            for store in stores:
                sql = DELETE_KEYS.format(table=store.table)
                await asyncio.to_thread(store.client.execute, sql, params)
    for store in stores:
        await asyncio.to_thread(_wait_for_mutations, store.client, store.table)
    checkpoint = await load_checkpoint(connection, TARGET)
    copied = 0
    for difference in differences:
        again = difference.missing + difference.changed
        if not again:
            continue
        rows = await connection.fetch(
            POSTGRES_ROWS, *checkpoint, difference.project_id, difference.day,
            difference.event_name, again,
        )  # fmt: skip
        if rows:  # one day: one monthly partition
            columns = [list(column) for column in zip(*rows, strict=True)]
            await asyncio.to_thread(insert_columns, client, columns)
        copied += len(rows)
    return copied


def _wait_for_mutations(client: Any, table: str, timeout_s: float = 300) -> None:
    """ALTER ... DELETE runs in the background: wait until it has rewritten the parts."""
    deadline = time.monotonic() + timeout_s
    query = (
        "SELECT count() FROM system.mutations "
        "WHERE database = currentDatabase() AND table = %(table)s AND is_done = 0"
    )
    while client.execute(query, {"table": table})[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError("ClickHouse did not finish deleting the extra rows in time")
        time.sleep(0.1)


async def run(
    database_url: str, clickhouse_url: str, *, fix: bool, cluster: str | None = None
) -> tuple[Report, Report | None]:
    """Compare; with fix, repair and compare again. Returns (first report, after repair).
    `cluster`: the remote_servers cluster the mirror is sharded over, if any."""
    connection = await asyncpg.connect(database_url)
    client = connect(clickhouse_url, timeout_s=300)
    try:
        nodes = await asyncio.to_thread(
            clickhouse_cluster.prepare, client, clickhouse_url, cluster, timeout_s=300
        )
        with clickhouse_cluster.stores(client, clickhouse_url, nodes, timeout_s=300) as stores:
            report = await compare(connection, client, stores)
            if not fix or not report.differences:
                return report, None
            copied = await repair(connection, client, report.differences, stores)
            after = await compare(connection, client, stores)
            after.repaired = copied
            return report, after
    finally:
        client.disconnect()
        await connection.close()
