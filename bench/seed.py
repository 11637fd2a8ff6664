"""Load a deterministic synthetic event data set into PostgreSQL (and ClickHouse).

    python -m bench.seed --database-url URL [--clickhouse-url URL] [--rows 20000000]
        [--days 90] [--seed 42] [--end 2026-11-01T00:00:00Z] [--truncate] [--json]
        [--clickhouse-only] [--clickhouse-shape current|replacing]

--clickhouse-url may be a chdb:///dir (nothing else may have the directory open).
--clickhouse-only loads ClickHouse alone, with the ids a bulk PostgreSQL seed gives;
--clickhouse-shape replacing makes the table of 18.16 and older versions (a
ReplacingMergeTree read with FINAL, left unconverted while no replicator runs), for
timing FINAL.

The data (bench/dataset.py, encoded by bench/encoding.py) is generated in chunks on a
background thread while the previous chunk is being sent. Into an empty (or --truncate'd)
PostgreSQL table it loads in one transaction: drop the indexes, TRUNCATE, COPY ... FREEZE,
rebuild the indexes. Either everything is there afterwards or nothing changed. Seed while
the service is stopped or idle: the replication checkpoint is moved past the seeded rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import asyncpg
import numpy as np
from clickhouse_driver import Client
from clickhouse_driver.util.helpers import parse_url

from bench.dataset import ChunkPlan, DatasetSpec, end_of, generate_all, plan_chunks
from bench.encoding import COPY_HEADER, COPY_TRAILER, PG_COLUMNS, Encoder
from bench.load import ProgressBar
from event_metrics.clickhouse import (
    CREATE_SCHEMA_VERSION,
    INSERT,
    MIGRATIONS,
    apply_schema,
    events_ddl,
)
from event_metrics.clickhouse_client import ClickHouseClient, DriverClient, connect, is_chdb
from event_metrics.schema import MIRRORED_COLUMNS

T = TypeVar("T")
PREFETCH_CHUNKS = 3

CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'events'::regclass AND contype IN ('p', 'u') ORDER BY conname
"""
PLAIN_INDEXES = """
SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
WHERE indrelid = 'events'::regclass
  AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = 'events'::regclass)
ORDER BY 1
"""
# COPY wrote the ids itself; live inserts must continue after them.
ADVANCE_IDENTITY = """
SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events))
"""
# Rows committed before the current snapshot's xmin are in ClickHouse already (we put them
# there); the replicator resumes after them instead of copying 20M rows a second time.
ADVANCE_CHECKPOINT = """
INSERT INTO replication_state (target, txid, last_id)
VALUES ('clickhouse', pg_snapshot_xmin(pg_current_snapshot()), 0)
ON CONFLICT (target) DO UPDATE SET txid = excluded.txid, last_id = 0, pending_txid = NULL,
    pending_last_id = NULL, updated_at = now()
"""


class SeedError(Exception):
    """The seed cannot run as asked; the message says why."""


@dataclass
class LoadResult:
    engine: str
    rows: int
    seconds: float
    detail: dict[str, float]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def prefetched(items: Iterator[T], depth: int = PREFETCH_CHUNKS) -> Iterator[T]:
    """Run `items` on a thread, `depth` ahead: numpy releases the GIL for most of it."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                box.put((True, item))
            box.put((False, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            box.put((False, exc))

    threading.Thread(target=produce, name="seed-generator", daemon=True).start()
    while True:
        ok, item = box.get()
        if not ok:
            if item is not None:
                raise item
            return
        yield item


def _encoded(
    spec: DatasetSpec, plans: list[ChunkPlan], encode: Callable[[Any], T]
) -> Iterator[tuple[int, T]]:
    for chunk in generate_all(spec, plans):
        yield len(chunk), encode(chunk)


# --------------------------------------------------------------------------- PostgreSQL


async def prepare_postgres(url: str, spec: DatasetSpec, *, truncate: bool) -> tuple[bool, int]:
    """(bulk mode, id base): bulk when the table is or will be empty."""
    connection = await asyncpg.connect(url)
    try:
        if truncate or not await connection.fetchval("SELECT EXISTS (SELECT 1 FROM events)"):
            return True, 0
        first_key = f"seed-{spec.seed}-{0:0{Encoder(spec, 0).key_digits}d}"
        if await connection.fetchval("SELECT 1 FROM events WHERE idempotency_key = $1", first_key):
            raise SeedError(
                f"events already holds rows of --seed {spec.seed}; use --truncate or another --seed"
            )
        return False, int(await connection.fetchval("SELECT coalesce(max(id), 0) FROM events"))
    finally:
        await connection.close()


async def seed_postgres(
    url: str, spec: DatasetSpec, plans: list[ChunkPlan], *, bulk: bool, id_base: int, quiet: bool
) -> LoadResult:
    """COPY the data set into events; in bulk mode without indexes, then rebuild them."""
    encoder = Encoder(spec, id_base)
    bar = ProgressBar(spec.rows, not quiet)
    connection = await asyncpg.connect(url)
    detail: dict[str, float] = {}
    started = time.monotonic()
    try:
        await connection.execute("SET maintenance_work_mem = '1GB'")
        async with connection.transaction():
            constraints = indexes = []
            if bulk:
                # Rebuilding an index from sorted input is far cheaper than 20M inserts
                # into it; TRUNCATE in this transaction is what allows COPY FREEZE, whose
                # rows need no hint-bit writes or VACUUM before the first query.
                constraints = await connection.fetch(CONSTRAINTS)
                indexes = await connection.fetch(PLAIN_INDEXES)
                if indexes:
                    names = ", ".join(row[0] for row in indexes)
                    await connection.execute(f"DROP INDEX {names}")
                for name, _ in constraints:
                    await connection.execute(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
                await connection.execute("TRUNCATE events")
            await connection.copy_to_table(
                "events",
                source=_copy_source(spec, plans, encoder, bar),
                columns=list(PG_COLUMNS),
                format="binary",
                freeze=bulk,
            )
            bar.finish(spec.rows)
            detail["copy_s"] = time.monotonic() - started
            for name, definition in constraints:
                await _timed(connection, f'ALTER TABLE events ADD CONSTRAINT "{name}" {definition}')
            for _, definition in indexes:
                await _timed(connection, definition)
            await connection.execute(ADVANCE_IDENTITY)
        detail["indexes_s"] = time.monotonic() - started - detail["copy_s"]
    finally:
        await connection.close()
    return LoadResult("postgres", spec.rows, time.monotonic() - started, detail)


async def _copy_source(
    spec: DatasetSpec, plans: list[ChunkPlan], encoder: Encoder, bar: ProgressBar
) -> AsyncIterator[bytes]:
    yield COPY_HEADER
    blobs = prefetched(_encoded(spec, plans, encoder.copy_rows))
    done = 0
    while (item := await asyncio.to_thread(next, blobs, None)) is not None:
        rows, blob = item
        yield blob
        done += rows
        bar.update(done)
    yield COPY_TRAILER


async def _timed(connection: asyncpg.Connection, sql: str) -> None:
    started = time.monotonic()
    await connection.execute(sql)
    print(f"  {time.monotonic() - started:6.1f}s  {sql}", file=sys.stderr)


async def finish_postgres(url: str, *, clickhouse_loaded: bool) -> float:
    """Move the replication checkpoint (when ClickHouse has the rows), then VACUUM ANALYZE."""
    started = time.monotonic()
    connection = await asyncpg.connect(url)
    try:
        if clickhouse_loaded:
            await connection.execute(ADVANCE_CHECKPOINT)
        # VACUUM as well as ANALYZE: after COPY FREEZE it only reads the visibility map, and
        # it keeps autovacuum from waking up on the new rows in the middle of a benchmark.
        await connection.execute("VACUUM (ANALYZE) events")
    finally:
        await connection.close()
    return time.monotonic() - started


# --------------------------------------------------------------------------- ClickHouse


def clickhouse_client(url: str, **settings: Any) -> Client:
    """A client for URL with driver settings (Client.from_url takes no settings)."""
    host, options = parse_url(url)
    return Client(host, settings=settings, **options)


def seed_clickhouse(
    url: str,
    spec: DatasetSpec,
    plans: list[ChunkPlan],
    *,
    truncate: bool,
    id_base: int,
    quiet: bool,
    shape: str = "current",
) -> LoadResult:
    """Insert the data set into ClickHouse's events, one columnar block per chunk."""
    if is_chdb(url):
        return _seed_chdb(url, spec, plans, truncate=truncate, id_base=id_base, quiet=quiet,
                          shape=shape)  # fmt: skip
    encoder = Encoder(spec, id_base)
    admin = clickhouse_client(url)
    # numpy columns: integer and fixed-width byte arrays go to the wire without a Python
    # object per value, except the bytes objects the String writer needs.
    client = clickhouse_client(url, use_numpy=True, strings_as_bytes=True)
    bar = ProgressBar(spec.rows, not quiet)
    started = time.monotonic()
    try:
        _create(DriverClient(admin), shape)
        if truncate:
            admin.execute("TRUNCATE TABLE events")
        done = 0
        for rows, columns in prefetched(_encoded(spec, plans, encoder.clickhouse_columns)):
            client.execute(INSERT, columns, columnar=True)
            done += rows
            bar.update(done)
        bar.finish(done)
    finally:
        client.disconnect()
        admin.disconnect()
    return LoadResult("clickhouse", spec.rows, time.monotonic() - started, {})


def _create(client: ClickHouseClient, shape: str) -> None:
    """The schema as the service makes it, or with --clickhouse-shape replacing, the table
    of 18.16 (and of versions before exactly-once), marked as at the last version."""
    if shape == "current":
        apply_schema(client)
        return
    client.execute(CREATE_SCHEMA_VERSION)
    for version, _ in MIGRATIONS:
        client.execute(
            "INSERT INTO schema_version (version, applied_at) SELECT %(v)s, now()", {"v": version}
        )
    client.execute(events_ddl(exactly_once=False))


def _seed_chdb(
    url: str,
    spec: DatasetSpec,
    plans: list[ChunkPlan],
    *,
    truncate: bool,
    id_base: int,
    quiet: bool,
    shape: str,
) -> LoadResult:
    """The chdb variant: the service's own client (JSONColumns blocks of Python values)."""
    encoder = Encoder(spec, id_base)
    client = connect(url)
    bar = ProgressBar(spec.rows, not quiet)
    started = time.monotonic()
    try:
        _create(client, shape)
        if truncate:
            client.execute("TRUNCATE TABLE events")
        done = 0
        for rows, columns in prefetched(_encoded(spec, plans, encoder.clickhouse_columns)):
            values = [
                np.char.decode(column, "utf-8").tolist() if column.dtype.kind == "S"
                else column.tolist()
                for column in columns
            ]  # fmt: skip
            client.insert("events", MIRRORED_COLUMNS, values)
            done += rows
            bar.update(done)
        bar.finish(done)
    finally:
        client.close()
    return LoadResult("clickhouse", spec.rows, time.monotonic() - started, {})


# --------------------------------------------------------------------------- command line


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole seed as the arguments say; return the summary."""
    spec = DatasetSpec(rows=args.rows, days=args.days, seed=args.seed, end=end_of(args.end))
    plans = plan_chunks(spec)
    started = time.monotonic()
    results = []
    bulk, id_base = True, 0  # --clickhouse-only: the ids a bulk PostgreSQL seed gives
    if not args.clickhouse_only:
        bulk, id_base = await prepare_postgres(args.database_url, spec, truncate=args.truncate)
        log(f"postgres: {spec.rows} rows ({'bulk: indexes rebuilt' if bulk else 'append'})")
        results.append(
            await seed_postgres(
                args.database_url, spec, plans, bulk=bulk, id_base=id_base, quiet=args.quiet
            )
        )
    if args.clickhouse_url:
        log(f"clickhouse: {spec.rows} rows")
        results.append(
            await asyncio.to_thread(
                seed_clickhouse,
                args.clickhouse_url,
                spec,
                plans,
                truncate=args.truncate,
                id_base=id_base,
                quiet=args.quiet,
                shape=args.clickhouse_shape,
            )
        )
    vacuum_s = 0.0
    if not args.clickhouse_only:
        vacuum_s = await finish_postgres(
            args.database_url, clickhouse_loaded=bool(args.clickhouse_url)
        )
    return {
        "rows": spec.rows,
        "days": spec.days,
        "seed": spec.seed,
        "start": spec.start.isoformat(),
        "end": spec.end.isoformat(),
        "chunks": len(plans),
        "bulk": bulk,
        "engines": {r.engine: {**asdict(r), "rows_per_s": round(r.rows_per_s)} for r in results},
        "vacuum_analyze_s": round(vacuum_s, 2),
        "total_s": round(time.monotonic() - started, 2),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.seed", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True, help="postgresql://... (migrated)")
    p.add_argument("--clickhouse-url", help="clickhouse://...; also load ClickHouse")
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--days", type=int, default=90, help="window length, ending at --end")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--end", default="2026-11-01T00:00:00Z", help="end of the window (RFC 3339)")
    p.add_argument("--truncate", action="store_true", help="empty both events tables first")
    p.add_argument("--json", action="store_true", help="JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--clickhouse-only", action="store_true", help="load ClickHouse alone")
    p.add_argument(
        "--clickhouse-shape", choices=("current", "replacing"), default="current",
        help="replacing: 18.16's ReplacingMergeTree, read with FINAL (for timing FINAL)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rows <= 0 or args.days <= 0:
        sys.exit("bench.seed: --rows and --days must be positive")
    try:
        summary = asyncio.run(seed(args))
    except SeedError as exc:
        sys.exit(f"bench.seed: {exc}")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for engine, result in summary["engines"].items():
            print(
                f"{engine:<10} {result['rows']:>11,} rows  {result['seconds']:7.1f}s  "
                f"{result['rows_per_s']:>10,.0f} rows/s"
            )
        print(f"vacuum+analyze {summary['vacuum_analyze_s']:.1f}s, total {summary['total_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
