"""`event-metrics verify`: is the ClickHouse mirror right? Compare it with PostgreSQL.

Both engines summarise their events per project, UTC day and event name: a count and two sums of
32-bit slices of md5(idempotency_key), a checksum of the set of keys that the same rows
give on both. Only rows up to the replicator's checkpoint are expected in ClickHouse;
rows after it may or may not be there yet (the copy is at-least-once), so a cell whose
summaries differ is then compared key by key: a key the checkpoint has passed that
ClickHouse lacks is missing, a key ClickHouse has and PostgreSQL does not is extra.

`--repair` copies each differing cell again, deletes the extra keys, and verifies again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg

from event_metrics.clickhouse import apply_schema, connect, insert_columns
from event_metrics.replicator import MIRRORED, TARGET
from event_metrics.watermark import load_checkpoint

Cell = tuple[int, date, str]  # (project_id, UTC day, event_name)
Summary = tuple[int, int, int]  # (rows, sum of key hash slice 1, slice 2)

UP_TO_CHECKPOINT = "(txid, id) <= ($1::text::xid8, $2::bigint)"
POSTGRES_SUMMARY = f"""
SELECT project_id, (ts AT TIME ZONE 'UTC')::date, event_name, count(*),
       sum(('x' || substr(md5(idempotency_key), 1, 8))::bit(32)::bigint),
       sum(('x' || substr(md5(idempotency_key), 9, 8))::bit(32)::bigint)
FROM events WHERE {UP_TO_CHECKPOINT}
GROUP BY 1, 2, 3
"""
CLICKHOUSE_SUMMARY = """
SELECT project_id, toDate(ts), event_name, count(),
       sum(reinterpretAsUInt32(reverse(substring(MD5(idempotency_key), 1, 4)))),
       sum(reinterpretAsUInt32(reverse(substring(MD5(idempotency_key), 5, 4))))
FROM events FINAL
GROUP BY project_id, toDate(ts), event_name
"""
CELL = (
    "project_id = $3 AND ts >= $4::date::timestamp AT TIME ZONE 'UTC' "
    "AND ts < ($4::date + 1)::timestamp AT TIME ZONE 'UTC' AND event_name = $5"
)
POSTGRES_KEYS = f"SELECT idempotency_key, {UP_TO_CHECKPOINT} FROM events WHERE {CELL}"
CLICKHOUSE_KEYS = """
SELECT DISTINCT idempotency_key FROM events
WHERE project_id = %(project_id)s AND toDate(ts) = %(day)s AND event_name = %(event_name)s
"""
POSTGRES_ROWS = f"""
SELECT {MIRRORED} FROM events
WHERE {CELL} AND {UP_TO_CHECKPOINT}
"""
DELETE_KEYS = """
ALTER TABLE events DELETE
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "day": self.day.isoformat(),
            "event_name": self.event_name,
            "postgres_rows": self.postgres_rows,
            "clickhouse_rows": self.clickhouse_rows,
            "missing": len(self.missing),
            "extra": len(self.extra),
        }


@dataclass
class Report:
    cells: int
    differences: list[Difference]
    repaired: int = 0


async def compare(connection: asyncpg.Connection, client: Any) -> Report:
    """Summaries of both engines, then key by key wherever they differ."""
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
        if ours == theirs:
            continue
        difference = await _compare_keys(connection, client, cell, checkpoint, ours, theirs)
        if difference.missing or difference.extra:
            differences.append(difference)
    return Report(cells=len(postgres.keys() | clickhouse.keys()), differences=differences)


async def _compare_keys(
    connection: asyncpg.Connection,
    client: Any,
    cell: Cell,
    checkpoint: tuple[str, int],
    ours: Summary,
    theirs: Summary,
) -> Difference:
    project_id, day, event_name = cell
    rows = await connection.fetch(POSTGRES_KEYS, *checkpoint, project_id, day, event_name)
    copied = {key for key, passed in rows if passed}
    anywhere = {key for key, _ in rows}
    params = {"project_id": project_id, "day": day, "event_name": event_name}
    mirrored = {r[0] for r in await asyncio.to_thread(client.execute, CLICKHOUSE_KEYS, params)}
    return Difference(
        project_id=project_id,
        day=day,
        event_name=event_name,
        postgres_rows=ours[0],
        clickhouse_rows=theirs[0],
        missing=sorted(copied - mirrored),
        extra=sorted(mirrored - anywhere),
    )


async def repair(connection: asyncpg.Connection, client: Any, differences: list[Difference]) -> int:
    """Copy every differing cell again and delete its extra keys; return rows copied."""
    checkpoint = await load_checkpoint(connection, TARGET)
    copied = 0
    for difference in differences:
        rows = await connection.fetch(
            POSTGRES_ROWS, *checkpoint, difference.project_id, difference.day,
            difference.event_name,
        )  # fmt: skip
        if rows:  # one day: one monthly partition
            columns = [list(column) for column in zip(*rows, strict=True)]
            await asyncio.to_thread(insert_columns, client, columns)
        copied += len(rows)
        if difference.extra:
            params = {
                "project_id": difference.project_id,
                "day": difference.day,
                "event_name": difference.event_name,
                "keys": tuple(difference.extra),
            }
            await asyncio.to_thread(client.execute, DELETE_KEYS, params)
    await asyncio.to_thread(_wait_for_mutations, client)
    return copied


def _wait_for_mutations(client: Any, timeout_s: float = 300) -> None:
    """ALTER ... DELETE runs in the background: wait until it has rewritten the parts."""
    deadline = time.monotonic() + timeout_s
    query = (
        "SELECT count() FROM system.mutations "
        "WHERE database = currentDatabase() AND table = 'events' AND is_done = 0"
    )
    while client.execute(query)[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError("ClickHouse did not finish deleting the extra rows in time")
        time.sleep(0.1)


async def run(database_url: str, clickhouse_url: str, *, fix: bool) -> tuple[Report, Report | None]:
    """Compare; with fix, repair and compare again. Returns (first report, after repair)."""
    connection = await asyncpg.connect(database_url)
    client = connect(clickhouse_url, timeout_s=300)
    try:
        await asyncio.to_thread(apply_schema, client)
        report = await compare(connection, client)
        if not fix or not report.differences:
            return report, None
        copied = await repair(connection, client, report.differences)
        after = await compare(connection, client)
        after.repaired = copied
        return report, after
    finally:
        client.disconnect()
        await connection.close()
