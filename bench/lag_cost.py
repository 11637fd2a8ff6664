"""What one lag measurement costs on a large backlog (docs/architecture.md, "Lag").

    python -m bench.lag_cost --database-url URL [--exact-rows 1000,10000,100000,1000000]
        [--rounds 7] [--fresh-rows 2000000 --admin-url URL]

The whole events table of URL (a `bench.seed` database, 20M rows) is the backlog: each
measurement starts from an empty checkpoint, as after a first start with an empty mirror.
Seeded rows are frozen and all-visible (COPY FREEZE, VACUUM); rows that a running service
has just written are not, and each costs a visibility check, so --fresh-rows also measures
a backlog of N rows inserted by one plain INSERT into a scratch database made (and dropped)
on the server of --admin-url, with autovacuum off. For each cap on the exact count it
prints the median milliseconds of `lag.measure` over the rounds (interleaved: cap by cap
within each round) and what it reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from event_metrics import lag
from event_metrics.checkpoint import START
from event_metrics.migrations import upgrade_head

FRESH_ROWS = """
INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts, received_at)
SELECT 1, 'fresh-' || g, 'e' || (g % 20), 'u' || (g % 50000), 'web',
       now() - (($1 - g) * interval '10 ms'), now() - (($1 - g) * interval '10 ms')
FROM generate_series(1, $1::bigint) g
"""


async def time_caps(url: str, caps: list[int], rounds: int) -> dict[int, tuple[float, lag.Lag]]:
    """Median seconds per measurement for each cap, and the last measurement."""
    connection = await asyncpg.connect(url)
    timings: dict[int, list[float]] = {cap: [] for cap in caps}
    last: dict[int, lag.Lag] = {}
    try:
        await lag.measure(connection, START, exact_rows=caps[0])  # warm the plan and caches
        for _ in range(rounds):
            for cap in caps:
                started = time.perf_counter()
                last[cap] = await lag.measure(connection, START, exact_rows=cap)
                timings[cap].append(time.perf_counter() - started)
    finally:
        await connection.close()
    return {cap: (statistics.median(timings[cap]), last[cap]) for cap in caps}


def report(title: str, results: dict[int, tuple[float, lag.Lag]]) -> None:
    print(title)
    print(f"  {'exact rows':>10}  {'median ms':>9}  {'lag_rows':>12}  capped")
    for cap, (seconds, measured) in results.items():
        print(f"  {cap:>10,}  {seconds * 1000:>9.1f}  {measured.rows:>12,}  {measured.capped}")


async def fresh_backlog(admin_url: str, rows: int, caps: list[int], rounds: int) -> None:
    name = f"em_lag_cost_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await upgrade_head(url)
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("ALTER TABLE events SET (autovacuum_enabled = off)")
            started = time.monotonic()
            await connection.execute(FRESH_ROWS, rows)
            print(f"inserted {rows:,} rows in {time.monotonic() - started:.1f} s")
        finally:
            await connection.close()
        report(f"{rows:,} freshly inserted rows", await time_caps(url, caps, rounds))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main(args: argparse.Namespace) -> None:
    caps = [int(cap) for cap in args.exact_rows.split(",")]
    if args.database_url:
        results = await time_caps(args.database_url, caps, args.rounds)
        report("the whole table as backlog (seeded: all-visible)", results)
    if args.fresh_rows:
        await fresh_backlog(args.admin_url, args.fresh_rows, caps, args.rounds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a seeded database, measured read-only")
    parser.add_argument("--exact-rows", default="1000,10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fresh-rows", type=int, default=0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
