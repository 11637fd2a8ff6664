"""The batched-ingest reference: bare asyncpg writing bench.load's rows into `events`.

    python -m bench.bare_asyncpg --database-url postgresql://postgres@127.0.0.1/db \
        [--total 200000] [--batch 1000] [--concurrency 8] [--path copy|unnest]

Each of `concurrency` connections commits `batch` rows per transaction, with the columns,
the ON CONFLICT DO NOTHING and the RETURNING the service's writer uses (COPY into its
staging table then INSERT ... SELECT, or one unnest INSERT), so "events/s through the
service" over "rows/s here" is the share of PostgreSQL's write speed the service keeps.
Rows are built before the clock starts: this measures the database path only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from event_metrics.postgres import create_pool
from event_metrics.schema import Row
from event_metrics.writer import init_writer_connection, write_copy, write_unnest

CHANNELS = ("web", "ios", "android")
DEFAULT_PROJECT_ID = 1  # the project 'default', which every migrated database has (alembic 0003)
WRITES = {"copy": write_copy, "unnest": write_unnest}


def make_batches(total: int, batch: int) -> list[list[Row]]:
    """Rows shaped like bench.load's events: distinct keys, 1000 users, properties.seq."""
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:12]
    rows = [
        Row(
            project_id=DEFAULT_PROJECT_ID,
            idempotency_key=f"{run}-{seq}",
            event_name=f"load_{run}",
            user_id=f"user-{seq % 1000}",
            channel=CHANNELS[seq % len(CHANNELS)],
            ts=now,
            received_at=now,
            properties=json.dumps({"seq": seq}),
        )
        for seq in range(total)
    ]
    return [rows[i : i + batch] for i in range(0, total, batch)]


async def measure(url: str, *, total: int, batch: int, concurrency: int, path: str) -> float:
    """Rows/s committed by `concurrency` connections taking batches from a shared list."""
    batches = make_batches(total, batch)
    write = WRITES[path]
    pool = await create_pool(url, size=concurrency, init=init_writer_connection)
    try:
        pending = iter(batches)

        async def worker(connection: asyncpg.Connection) -> None:
            for rows in pending:  # one shared iterator: each batch is written once
                await write(connection, rows)

        connections = [await pool.acquire() for _ in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections))
        elapsed = time.perf_counter() - started
        for connection in connections:
            await pool.release(connection)
    finally:
        await pool.close()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.bare_asyncpg", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--total", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--path", choices=[*WRITES, "both"], default="both")
    args = parser.parse_args()
    for path in WRITES if args.path == "both" else [args.path]:
        rate = asyncio.run(
            measure(
                args.database_url,
                total=args.total,
                batch=args.batch,
                concurrency=args.concurrency,
                path=path,
            )
        )
        print(f"{path:6s} batch {args.batch} concurrency {args.concurrency}: {rate:9.0f} rows/s")


if __name__ == "__main__":
    main()
