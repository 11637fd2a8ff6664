"""Time the reference's query classes q1-q3 through /metrics and as plain SQL.

    python -m bench.queries --url http://127.0.0.1:8080 --database-url URL
        [--clickhouse-url URL] [--backends postgres,clickhouse] [--windows 1,7,30,90]
        [--runs 5] [--end 2026-11-01T00:00:00Z] [--out docs/bench] [--json]
        [--also NAME=URL[@BACKEND] ...]

Each path (a column of the report) runs every query class for every window `--runs` times;
the first run warms caches and is discarded. Paths: `sql-postgres` (the reference's plain
SQL on the events table: the baseline for the speed-ups), one `/metrics?backend=<name>`
path per --backends entry, and with --clickhouse-url `sql-clickhouse` (the same SQL on
ClickHouse, no FINAL, like the reference's ClickHouse column). The HTTP backends' answers
are compared field by field; any difference is reported as a mismatch. `--also` adds a
/metrics path of another service (say one on a ReplacingMergeTree mirror, which reads
FINAL: `--also clickhouse-final=http://127.0.0.1:8082@clickhouse`), timed cell by cell
beside the others.

A chdb:// --clickhouse-url needs its directory free: not while a service runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Any

import aiohttp
import asyncpg
import numpy as np

from bench.dataset import end_of
from bench.report import render_chart, render_markdown
from event_metrics.clickhouse_client import connect

BASELINE = "sql-postgres"
# /metrics paths: backend[-plan]; postgres-raw scans events, postgres-rollup reads rollups.
DEFAULT_BACKENDS = ("postgres-raw", "postgres-rollup", "clickhouse")


@dataclass(frozen=True)
class QueryClass:
    id: str
    description: str
    params: dict[str, str]  # /metrics parameters besides from/to/backend
    postgres_sql: str  # $1 = from, $2 = to
    clickhouse_sql: str  # %(start)s, %(end)s = Unix seconds


QUERIES = (
    QueryClass(
        "q1",
        "hourly product_view by channel",
        {"event_name": "product_view", "granularity": "hour", "group_by": "channel"},
        "SELECT date_trunc('hour', ts) h, channel, count(*), count(DISTINCT user_id) "
        "FROM events WHERE event_name = 'product_view' AND ts >= $1 AND ts < $2 GROUP BY 1, 2",
        "SELECT toStartOfHour(ts) h, channel, count(), uniqExact(user_id) FROM events "
        "WHERE event_name = 'product_view' AND ts >= toDateTime(%(start)s) "
        "AND ts < toDateTime(%(end)s) GROUP BY h, channel",
    ),
    QueryClass(
        "q2",
        "per-channel totals + unique users",
        {"group_by": "channel"},
        "SELECT channel, count(*), count(DISTINCT user_id) "
        "FROM events WHERE ts >= $1 AND ts < $2 GROUP BY channel",
        "SELECT channel, count(), uniqExact(user_id) FROM events "
        "WHERE ts >= toDateTime(%(start)s) AND ts < toDateTime(%(end)s) GROUP BY channel",
    ),
    QueryClass(
        "q3",
        "daily per event_name + unique users",
        {"granularity": "day", "group_by": "event_name"},
        "SELECT date_trunc('day', ts) d, event_name, count(*), count(DISTINCT user_id) "
        "FROM events WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2",
        "SELECT toDate(ts) d, event_name, count(), uniqExact(user_id) FROM events "
        "WHERE ts >= toDateTime(%(start)s) AND ts < toDateTime(%(end)s) GROUP BY d, event_name",
    ),
)


@dataclass
class Cell:
    """One path's timings for one query class and window."""

    samples_ms: list[float] = field(default_factory=list)
    events: int | None = None  # total events the answer counts: a cross-check
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        kept = self.samples_ms[1:] or self.samples_ms  # the first run is the warm-up
        return {
            "median_ms": round(statistics.median(kept), 2) if kept else None,
            "p95_ms": round(float(np.percentile(kept, 95)), 2) if kept else None,
            "samples_ms": [round(s, 2) for s in self.samples_ms],
            "events": self.events,
            "error": self.error,
        }


# A path runs one query and returns (events counted, decoded answer or None).
Runner = Callable[[QueryClass, datetime, datetime], Awaitable[tuple[int, Any]]]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def http_runner(
    session: aiohttp.ClientSession, url: str, path: str, read_key: str | None
) -> Runner:
    # "postgres-raw" means backend=postgres&plan=raw; a bare name leaves the plan to the service.
    backend, _, plan = path.partition("-")
    extra = {"backend": backend, **({"plan": plan} if plan else {})}

    async def run(query: QueryClass, start: datetime, end: datetime) -> tuple[int, Any]:
        params = {**query.params, "from": rfc3339(start), "to": rfc3339(end), **extra}
        headers = {"Authorization": f"Bearer {read_key}"} if read_key else {}
        async with session.get(f"{url}/metrics", params=params, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:300].decode(errors='replace')}")
        answer = json.loads(body)
        return int(answer["total"]["events"]), answer

    return run


def postgres_runner(connection: asyncpg.Connection) -> Runner:
    async def run(query: QueryClass, start: datetime, end: datetime) -> tuple[int, Any]:
        rows = await connection.fetch(query.postgres_sql, start, end)
        return sum(row[-2] for row in rows), None

    return run


def clickhouse_runner(url: str) -> Runner:
    client = connect(url, timeout_s=300)

    def execute(query: QueryClass, start: datetime, end: datetime) -> int:
        params = {"start": int(start.timestamp()), "end": int(end.timestamp())}
        return sum(row[-2] for row in client.execute(query.clickhouse_sql, params))

    async def run(query: QueryClass, start: datetime, end: datetime) -> tuple[int, Any]:
        return await asyncio.to_thread(execute, query, start, end), None

    return run


async def time_cell(
    runner: Runner, query: QueryClass, start: datetime, end: datetime, runs: int, timeout_s: float
) -> tuple[Cell, Any]:
    cell, answer = Cell(), None
    for _ in range(runs):
        began = time.perf_counter()
        try:
            events, answer = await asyncio.wait_for(runner(query, start, end), timeout_s)
        except Exception as exc:  # recorded in the report; the other cells still run
            cell.error = f"{type(exc).__name__}: {exc}"[:300]
            break
        cell.samples_ms.append((time.perf_counter() - began) * 1000)
        cell.events = events
    return cell, answer


def compare_answers(answers: dict[str, Any]) -> list[str]:
    """Differences between HTTP backends' answers (the backend field aside)."""
    named = [(name, answer) for name, answer in answers.items() if answer is not None]
    problems = []
    for name, answer in named[1:]:
        first_name, first = named[0]
        a = {k: v for k, v in first.items() if k not in ("backend", "freshness")}
        b = {k: v for k, v in answer.items() if k not in ("backend", "freshness")}
        if a == b:
            continue
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        detail = f"{first_name} vs {name}: fields {', '.join(keys)} differ"
        if "series" in keys:
            sa, sb = a.get("series", []), b.get("series", [])
            diff = [i for i, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y]
            detail += f"; series lengths {len(sa)}/{len(sb)}, {len(diff)} entries differ"
            if diff:
                detail += f", first at [{diff[0]}]: {sa[diff[0]]} vs {sb[diff[0]]}"
        if "total" in keys:
            detail += f"; total {a.get('total')} vs {b.get('total')}"
        problems.append(detail)
    return problems


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    end = end_of(args.end)
    windows = [int(w) for w in args.windows.split(",") if w.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    also = [_other_service(text) for text in args.also]
    connection = await asyncpg.connect(args.database_url, server_settings={"timezone": "UTC"})
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        paths: dict[str, Runner] = {BASELINE: postgres_runner(connection)}
        for backend in backends:
            paths[backend] = http_runner(session, args.url.rstrip("/"), backend, args.read_key)
        for name, url, backend in also:
            paths[name] = http_runner(session, url.rstrip("/"), backend, args.read_key)
            backends.append(name)
        if args.clickhouse_url:
            paths["sql-clickhouse"] = clickhouse_runner(args.clickhouse_url)
        try:
            rows = await connection.fetchval("SELECT count(*) FROM events")
            cells: list[dict[str, Any]] = []
            for query in QUERIES:
                for days in windows:
                    cells.append(await _run_row(paths, backends, query, end, days, args))
        finally:
            await connection.close()
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": args.url,
        "end": rfc3339(end),
        "runs": args.runs,
        "events_rows": rows,
        "baseline": BASELINE,
        "paths": list(paths),
        "http_backends": backends,
        "cells": cells,
    }


async def _run_row(
    paths: dict[str, Runner],
    backends: list[str],
    query: QueryClass,
    end: datetime,
    days: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    start = end - timedelta(days=days)
    row: dict[str, Any] = {"query": query.id, "description": query.description, "days": days}
    answers: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name, runner in paths.items():
        cell, answer = await time_cell(runner, query, start, end, args.runs, args.timeout)
        results[name] = cell.summary()
        if name in backends:
            answers[name] = answer
        median = results[name]["median_ms"]
        print(
            f"{query.id}-{days}d {name:<16} "
            + (f"{median:10.1f} ms" if median is not None else f"ERROR {cell.error}"),
            file=sys.stderr,
            flush=True,
        )
    counts = {name: r["events"] for name, r in results.items() if r["events"] is not None}
    mismatches = compare_answers(answers)
    if len(set(counts.values())) > 1:
        mismatches.append(f"events counted differ: {counts}")
    row["paths"] = results
    row["mismatches"] = mismatches
    for problem in mismatches:
        print(f"  MISMATCH {query.id}-{days}d: {problem}", file=sys.stderr)
    return row


def _other_service(text: str) -> tuple[str, str, str]:
    """NAME=URL[@BACKEND] as (name, url, backend path; clickhouse by default)."""
    name, _, rest = text.partition("=")
    url, _, backend = rest.partition("@")
    if not name or not url:
        sys.exit(f"bench.queries: --also {text!r}: expected NAME=URL[@BACKEND]")
    return name, url, backend or "clickhouse"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.queries", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="service base URL")
    p.add_argument("--database-url", required=True, help="PostgreSQL, for the SQL baseline")
    p.add_argument("--clickhouse-url", help="ClickHouse, for the sql-clickhouse path")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="/metrics backends")
    p.add_argument("--windows", default="1,7,30,90", help="window lengths in days")
    p.add_argument("--runs", type=int, default=5, help="runs per cell; the first is warm-up")
    p.add_argument("--end", default="2026-11-01T00:00:00Z", help="windows end here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per query")
    p.add_argument("--out", default="docs/bench", help="folder for queries.{md,png,json}")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of markdown")
    p.add_argument("--read-key", help="a read key of the project whose events are queried")
    p.add_argument(
        "--also", action="append", default=[], metavar="NAME=URL[@BACKEND]",
        help="a /metrics path of another service (same read key), e.g. on another mirror",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 2:
        sys.exit("bench.queries: --runs must be at least 2 (the first run is discarded)")
    result = asyncio.run(run_benchmark(args))
    out = FsPath(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(result)
    (out / "queries.md").write_text(markdown)
    (out / "queries.json").write_text(json.dumps(result, indent=2) + "\n")
    render_chart(result, out / "queries.png")
    print(json.dumps(result, indent=2) if args.json else markdown)
    return 1 if any(cell["mismatches"] for cell in result["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
