"""Two ClickHouse shards against one node, on the same data: replication and q1-q3.

    python -m bench.cluster --database-url postgresql://postgres@127.0.0.1:5432/postgres
        [--rows 2000000] [--days 30] [--seed 42] [--end 2026-11-01T00:00:00Z]
        [--rounds 3] [--runs 5] [--windows 1,7,30] [--out docs/bench/cluster.json]

Creates the PostgreSQL database `event_metrics_bench_cluster` (dropped first if it exists)
next to --database-url and seeds it (bench.seed). Starts three throwaway ClickHouse
servers (throwaway/clickhouse.py) on this machine: one node alone, and two shards of one
cluster (`EVENT_METRICS_CLICKHOUSE_CLUSTER`), the service talking to the first.

Replication: in each of --rounds rounds both mirrors are emptied and the checkpoint reset,
then the service's own replicator (`Replicator.run_once`, default batch size) copies every
row into each, one after the other, the order alternating between rounds; rows/s per run.

Queries: both mirrors are merged (`OPTIMIZE ... FINAL`), then q1-q3 (bench.queries'
classes) run over each window exactly as `/metrics?backend=clickhouse` runs them
(`metrics_clickhouse.fetch_metrics`: the series and the total on two clients at once),
alternating between the mirrors, --runs times after a warm-up; the median is reported.
Both mirrors must give identical answers, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from clickhouse_driver import Client
from throwaway.clickhouse import ClickHouseServer, start_cluster

from bench.dataset import DatasetSpec, end_of, plan_chunks
from bench.queries import QUERIES
from bench.seed import finish_postgres, seed_postgres
from bench.summary import machine_info
from event_metrics.clickhouse import ClickHousePool
from event_metrics.clickhouse_cluster import LOCAL_TABLE
from event_metrics.freshness import behind
from event_metrics.metrics import MetricsQuery
from event_metrics.metrics_clickhouse import fetch_metrics
from event_metrics.migrations import upgrade_head
from event_metrics.replicator import Replicator
from event_metrics.settings import ReplicationSettings

DATABASE = "event_metrics_bench_cluster"
CLUSTER = "bench_cluster"
MIRROR = "bench"  # the ClickHouse database, on every server
MAX_ROWS = 50_000


class Mirror:
    """One ClickHouse mirror: a single node, or the cluster through its first shard."""

    def __init__(self, name: str, servers: list[ClickHouseServer], cluster: str | None) -> None:
        self.name = name
        self.servers = servers
        self.cluster = cluster

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.servers[0].port}/{MIRROR}"

    def empty(self) -> None:
        for server in self.servers:
            client = Client.from_url(server.url)
            client.execute(f"DROP DATABASE IF EXISTS {MIRROR}")
            client.execute(f"CREATE DATABASE {MIRROR}")
            client.disconnect()

    def merge(self) -> None:
        table = LOCAL_TABLE if self.cluster else "events"
        for server in self.servers:
            client = Client.from_url(f"clickhouse://default@127.0.0.1:{server.port}/{MIRROR}")
            client.execute(f"OPTIMIZE TABLE {table} FINAL", settings={"optimize_throw_if_noop": 0})
            client.disconnect()

    def rows_per_server(self) -> list[int]:
        table = LOCAL_TABLE if self.cluster else "events"
        counts = []
        for server in self.servers:
            client = Client.from_url(f"clickhouse://default@127.0.0.1:{server.port}/{MIRROR}")
            counts.append(client.execute(f"SELECT count() FROM {table}")[0][0])
            client.disconnect()
        return counts


async def replicate(database_url: str, mirror: Mirror) -> float:
    """Copy every row into an empty mirror from the start; return the rows per second."""
    mirror.empty()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM replication_state WHERE target = 'clickhouse'")
    finally:
        await connection.close()
    replicator = Replicator(database_url, mirror.url, ReplicationSettings(), cluster=mirror.cluster)
    started = time.perf_counter()
    copied = await replicator.run_once()
    return copied / (time.perf_counter() - started)


def shapes(end: datetime, windows: list[int]) -> Iterator[tuple[str, int, MetricsQuery]]:
    for query_class in QUERIES:
        for days in windows:
            params = query_class.params
            yield (
                query_class.id,
                days,
                MetricsQuery(
                    project_id=1,
                    start=end - timedelta(days=days),
                    end=end,
                    event_name=params.get("event_name"),
                    granularity=params.get("granularity", "total"),  # type: ignore[arg-type]
                    group_by=tuple(params["group_by"].split(",")) if "group_by" in params else (),  # type: ignore[arg-type]
                    timezone="UTC",
                ),
            )


async def time_queries(
    mirrors: list[Mirror], end: datetime, windows: list[int], runs: int
) -> list[dict[str, Any]]:
    pools = {m.name: ClickHousePool(m.url, size=2, timeout_s=300) for m in mirrors}
    freshness = behind("clickhouse", None)
    cells = []
    try:
        for query_id, days, query in shapes(end, windows):
            timings: dict[str, list[float]] = {m.name: [] for m in mirrors}
            answers: dict[str, bytes] = {}
            for run in range(runs + 1):  # the first run warms caches and is dropped
                order = mirrors if run % 2 == 0 else mirrors[::-1]
                for mirror in order:
                    started = time.perf_counter()
                    answer = await fetch_metrics(pools[mirror.name], query, MAX_ROWS, freshness)
                    elapsed = time.perf_counter() - started
                    if run:
                        timings[mirror.name].append(elapsed * 1000)
                    answers[mirror.name] = msgspec.json.encode(answer)
            if len(set(answers.values())) != 1:
                raise SystemExit(f"{query_id} over {days} d: the mirrors answer differently")
            medians = {name: round(statistics.median(ms), 1) for name, ms in timings.items()}
            first, second = (medians[m.name] for m in mirrors)
            cells.append(
                {"query": query_id, "days": days, **medians, "speedup": round(first / second, 2)}
            )
            log(f"{query_id} {days:>3} d: " + "  ".join(f"{k} {v}" for k, v in cells[-1].items()))
    finally:
        for pool in pools.values():
            await pool.close()
    return cells


@contextlib.contextmanager
def servers(directory: Path) -> Iterator[tuple[ClickHouseServer, list[ClickHouseServer]]]:
    single = ClickHouseServer(directory / "single")
    shards: list[ClickHouseServer] = []
    try:
        single.start()
        shards = start_cluster(directory / "cluster", {CLUSTER: [1, 1]})
        yield single, shards
    finally:
        for server in [single, *shards]:
            server.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(args.database_url)
    base = args.database_url.rsplit("/", 1)[0]
    database_url = f"{base}/{DATABASE}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    try:
        await upgrade_head(database_url)
        spec = DatasetSpec(rows=args.rows, days=args.days, seed=args.seed, end=end_of(args.end))
        log(f"seeding PostgreSQL with {spec.rows} rows")
        await seed_postgres(database_url, spec, plan_chunks(spec), bulk=True, id_base=0, quiet=True)
        await finish_postgres(database_url, clickhouse_loaded=False)
        with (
            tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder,
            servers(Path(folder)) as (single, shards),
        ):
            mirrors = [
                Mirror("one_node", [single], None),
                Mirror("two_shards", shards, CLUSTER),
            ]
            replication: dict[str, list[float]] = {m.name: [] for m in mirrors}
            for round_number in range(args.rounds):
                order = mirrors if round_number % 2 == 0 else mirrors[::-1]
                for mirror in order:
                    rate = await replicate(database_url, mirror)
                    replication[mirror.name].append(round(rate))
                    log(f"round {round_number + 1}: {mirror.name} {rate:,.0f} rows/s")
            for mirror in mirrors:
                mirror.merge()
            placed = {m.name: m.rows_per_server() for m in mirrors}
            windows = [int(w) for w in args.windows.split(",")]
            cells = await time_queries(mirrors, spec.end, windows, args.runs)
            client = Client.from_url(single.url)
            version = client.execute("SELECT version()")[0][0]
            client.disconnect()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()
    medians = {name: statistics.median(rates) for name, rates in replication.items()}
    return {
        "rows": spec.rows,
        "days": spec.days,
        "seed": spec.seed,
        "end": spec.end.isoformat(),
        "replication_rows_per_s": replication,
        "replication_ratio": round(medians["two_shards"] / medians["one_node"], 2),
        "rows_per_server": placed,
        "queries_ms": cells,
        "machine": machine_info({"clickhouse": version}),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True, help="postgresql://... (any database)")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--end", default="2026-11-01T00:00:00Z")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--windows", default="1,7,30")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
