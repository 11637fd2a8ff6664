"""Compare PostgreSQL write paths for a batch of events: COPY+INSERT vs unnest.

    python -m bench.write_paths --database-url postgresql://postgres@127.0.0.1/db

Writes into the real `events` table (schema from alembic), with distinct keys per run,
and prints rows/s per path and batch size. The writer uses the faster one per size.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from event_metrics.schema import Row
from event_metrics.writer import init_writer_connection, write_copy, write_unnest

DEFAULT_PROJECT_ID = 1  # the project 'default', which every migrated database has (alembic 0003)


def make_rows(n: int) -> list[Row]:
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    return [
        Row(
            project_id=DEFAULT_PROJECT_ID,
            idempotency_key=f"wp-{tag}-{i}",
            event_name="product_view",
            user_id=f"user-{i % 5000}",
            channel="web",
            ts=now,
            received_at=now,
            properties=None,
        )
        for i in range(n)
    ]


async def measure(url: str, batch: int, total: int) -> dict[str, float]:
    connection = await asyncpg.connect(url)
    await init_writer_connection(connection)
    results = {}
    try:
        for name, write in (("copy", write_copy), ("unnest", write_unnest)):
            batches = [make_rows(batch) for _ in range(max(1, total // batch))]
            started = time.perf_counter()
            for rows in batches:
                await write(connection, rows)
            elapsed = time.perf_counter() - started
            results[name] = batch * len(batches) / elapsed
    finally:
        await connection.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--total", type=int, default=50_000)
    args = parser.parse_args()
    for batch in (1, 10, 100, 1000, 5000):
        total = min(args.total, batch * 2000)
        rates = asyncio.run(measure(args.database_url, batch, total))
        print(f"batch {batch:5d}: " + "  ".join(f"{k} {v:9.0f} rows/s" for k, v in rates.items()))


if __name__ == "__main__":
    main()
