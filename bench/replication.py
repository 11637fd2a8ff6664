"""Replication throughput, PostgreSQL -> ClickHouse: each mirror filled from empty by the
replicator, in interleaved rounds, in this process.

    python -m bench.replication --database-url postgresql://.../bench \\
        --mirror ch18=clickhouse://default@127.0.0.1:9000/bench \\
        --mirror chdb=chdb:///tmp/bench-chdb --batch-rows 10000,50000 --rounds 2

The database is the bench's own (bench.seed fills it): each run drops the mirror's events
table and the replicator's checkpoint, then times `Replicator.run_once()`: the schema,
then every row below the horizon, block by block, each with its pending range and its
checkpoint saved in PostgreSQL. Prints one JSON line per run: rows per second of wall
time, and this process's CPU seconds (chdb's engine runs in it; a server's does not).
`--phases N` instead times N blocks by phase: the CPU per row of the PostgreSQL fetch and
of the copy into ClickHouse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg

from event_metrics.clickhouse import apply_schema
from event_metrics.clickhouse_client import connect
from event_metrics.replicator import FETCH_BATCH, TARGET, Replicator, copy_rows
from event_metrics.settings import Settings


async def fill(database_url: str, clickhouse_url: str, batch_rows: int) -> dict[str, float]:
    """Empty the mirror, then copy everything into it once; the run's figures."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM replication_state WHERE target = $1", TARGET)
    finally:
        await connection.close()
    client = connect(clickhouse_url, timeout_s=300)
    try:
        client.execute("DROP TABLE IF EXISTS events")
    finally:
        client.close()
    settings = Settings.build(replication_batch_rows=batch_rows).replication
    replicator = Replicator(database_url, clickhouse_url, settings)
    started, cpu = time.monotonic(), time.process_time()
    rows = await replicator.run_once()
    seconds = time.monotonic() - started
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


async def phases(
    database_url: str, clickhouse_url: str, batch_rows: int, blocks: int
) -> dict[str, float]:
    """CPU per row of fetching blocks and of copying them (into an emptied mirror)."""
    connection = await asyncpg.connect(database_url)
    client = connect(clickhouse_url, timeout_s=300)
    try:
        client.execute("DROP TABLE IF EXISTS events")
        apply_schema(client)
        start, fetch_s, copy_s, rows_done = ("0", 0), 0.0, 0.0, 0
        for _ in range(blocks):
            began = time.process_time()
            rows = await connection.fetch(FETCH_BATCH, *start, "18446744073709551615", batch_rows)
            fetched = time.process_time()
            end = (rows[-1]["txid_text"], rows[-1]["id"])
            copy_rows(client, rows, start, end)
            fetch_s, copy_s = fetch_s + fetched - began, copy_s + time.process_time() - fetched
            rows_done, start = rows_done + len(rows), end
    finally:
        client.close()
        await connection.close()
    return {
        "rows": rows_done,
        "fetch_us_per_row": round(fetch_s / rows_done * 1e6, 2),
        "copy_us_per_row": round(copy_s / rows_done * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--mirror", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--batch-rows", default="10000", help="comma-separated block sizes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", type=int, metavar="BLOCKS", help="time phases instead")
    args = parser.parse_args()
    mirrors = [text.split("=", 1) for text in args.mirror]
    if args.phases:
        for name, url in mirrors:
            for batch_rows in [int(n) for n in args.batch_rows.split(",")]:
                figures = asyncio.run(phases(args.database_url, url, batch_rows, args.phases))
                print(json.dumps({"mirror": name, "batch_rows": batch_rows, **figures}))
        return
    for round_ in range(args.rounds):
        for batch_rows in [int(n) for n in args.batch_rows.split(",")]:
            for name, url in mirrors:
                figures = asyncio.run(fill(args.database_url, url, batch_rows))
                print(json.dumps({"round": round_, "mirror": name, "batch_rows": batch_rows,
                                  **figures}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
