"""bench.run's report: the machine it ran on, and summary.md from the collected results."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.report import render_markdown

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("event-metrics", "litestar", "uvicorn", "asyncpg", "clickhouse-driver", "numpy")


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def machine_info(server_versions: dict[str, str]) -> dict[str, Any]:
    """CPU count, memory, OS and the versions of everything that took part."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": platform.processor() or platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "git": _git_revision(),
        **server_versions,
        "packages": packages,
    }


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def _load_table(
    loads: dict[str, list[dict[str, Any]]], wrk_runs: list[dict[str, Any]]
) -> list[str]:
    """One row per bench.load run; the single-event and -batch 1000 rows also give wrk's
    rate (one worker)."""
    by_wrk = {
        ("max, single events", target): statistics.median(r["rps"] for r in rounds)
        for run in wrk_runs if run["workers"] == 1 and not run.get("batch")
        for target, rounds in run["rounds"].items()
    }  # fmt: skip
    by_wrk |= {
        ("max, -batch 1000", target): statistics.median(r["events_per_s"] for r in rounds)
        for run in wrk_runs if run.get("batch") == 1000
        for target, rounds in run["rounds"].items()
    }  # fmt: skip
    lines = [
        "| target | run | events | bench.load events/s | wrk events/s | p50 ms | p99 ms | max ms "
        "| non-2xx | conn. errors | verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, runs in loads.items():
        for run in runs:
            latency = run.get("latency_ms") or {}
            by_wrk_rate = by_wrk.get((run["name"], target))
            lines.append(
                f"| {target} | {run['name']} | {_n(run.get('total_events'))} "
                f"| {_n(run.get('events_per_s'))} | {_n(by_wrk_rate)} "
                f"| {_n(latency.get('p50'), 1)} "
                f"| {_n(latency.get('p99'), 1)} | {_n(latency.get('max'), 1)} "
                f"| {_n(run.get('errors'))} | {_n(run.get('connection_errors'))} "
                f"| {_n(run.get('verified'))} |"
            )
    return lines


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def wrk_table(runs: list[dict[str, Any]]) -> list[str]:
    """Single events under wrk: the service against the no-op app, per worker count."""
    lines = [
        "| HTTP workers | service events/s | no-op events/s | ratio (medians) "
        "| service p50 / p99 ms | service non-2xx | peak RSS per process |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run.get("batch"):
            continue  # in the ingest table's wrk column
        service, noop = run["rounds"]["service"], run["rounds"]["noop"]
        rates = [r["rps"] for r in service]
        base = [r["rps"] for r in noop]
        p50 = statistics.median(r["p50_ms"] for r in service)
        p99 = statistics.median(r["p99_ms"] for r in service)
        rss = max((r["peak_rss_mib"] or 0) for r in service)
        lines.append(
            f"| {run['workers']} | {_spread(rates)} | {_spread(base)} "
            f"| {statistics.median(rates) / statistics.median(base):.2f} "
            f"| {p50:.1f} / {p99:.1f} | {sum(r['errors'] for r in service)} | {rss:.0f} MiB |"
        )
    return lines


def batched_lines(result: dict[str, Any] | None) -> list[str]:
    """Batched ingest through the service against bare asyncpg (bench.batched_vs_bare)."""
    if not result:
        return []
    ratios = [r["ratio"] for r in result["rounds"]]
    return [
        "Batched ingest against bare asyncpg on the same table (`bench.batched_vs_bare`: "
        "the service, with PostgreSQL only, under wrk, 1,000 events per request, 8 "
        "connections; bare asyncpg COPY with 8 connections; ABBA rounds):",
        "",
        "| service events/s | bare asyncpg rows/s | ratio per round |",
        "|---|---|---|",
        f"| {result['service_median']:,.0f} | {result['bare_median']:,.0f} "
        f"| **{statistics.median(ratios):.2f}** ({min(ratios):.2f}–{max(ratios):.2f}) |",
        "",
    ]


def protocol_comparison(runs: list[dict[str, Any]]) -> list[str]:
    """Median events/s of the interleaved -protocol rounds, each against native."""
    rates: dict[str, list[float]] = {}
    for run in runs:
        if "-protocol" in run["flags"]:
            protocol = run["flags"][run["flags"].index("-protocol") + 1]
            rates.setdefault(protocol, []).append(run["events_per_s"])
    if "native" not in rates:
        return []
    native = statistics.median(rates["native"])
    lines = [
        "| protocol (-batch 100) | rounds | median events/s | × native |",
        "|---|---|---|---|",
    ]
    for protocol, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {protocol} | {len(values)} | {median:,.0f} | {median / native:.2f} |")
    return lines


def render_summary(result: dict[str, Any]) -> str:
    """summary.md: machine, commands, seed rates, ingest runs, and the query table."""
    machine = result["machine"]
    seed = result["seed"]
    lines = [
        "# Benchmark summary",
        "",
        f"Run {result['started_at']} – {result['finished_at']} by `python -m bench.run`.",
        "",
        "## Machine",
        "",
        f"- {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB memory, "
        f"{machine['os']}",
        f"- PostgreSQL {machine['postgresql']}, ClickHouse {machine['clickhouse']}, "
        f"Python {machine['python']}, git {machine['git']}",
        "- " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        "- Client, service, PostgreSQL and ClickHouse all share these cores.",
        "",
        "## Seed",
        "",
        f"{seed['rows']:,} events over {seed['days']} days ({seed['start']} – {seed['end']}), "
        f"seed {seed['seed']}, {seed['chunks']} chunks.",
        "",
        "| engine | seconds | rows/s | detail |",
        "|---|---|---|---|",
    ]
    for engine, r in seed["engines"].items():
        detail = ", ".join(f"{k} {v:.1f}" for k, v in r["detail"].items())
        lines.append(f"| {engine} | {r['seconds']:.1f} | {r['rows_per_s']:,} | {detail} |")
    lines += [
        "",
        f"VACUUM ANALYZE {seed['vacuum_analyze_s']} s; seed total {seed['total_s']} s; "
        f"`event-metrics rebuild-rollups` {result['rollup_rebuild_s']} s.",
        "",
        "## Ingest (bench.load)",
        "",
        "`noop` is bench.noop, the same routes doing nothing: the ceiling of the load tool "
        "and the HTTP stack on this machine. `service-no-rollups` is the service with "
        "EVENT_METRICS_ROLLUPS=false (no refresher), for the cost of keeping rollups.",
        "",
        *_load_table(result["load"], result.get("wrk", [])),
        "",
        "Single events under wrk (an independent load generator in C; "
        "`bench/wrk/single_event.lua`, 64 connections, 2 threads, 10 s per round, "
        "service and no-op interleaved; median (min–max)):",
        "",
        *wrk_table(result.get("wrk", [])),
        "",
        "bench.load's rows above are limited by bench.load itself: against the no-op app its "
        "single-event rate is the ceiling of a Python client, not of the HTTP stack. "
        "The wrk column of the `-batch 1000` rows is `bench/wrk/batch_events.lua` "
        "(1,000 events per request, 8 connections, 10 s, median of three rounds interleaved "
        "with the no-op app's).",
        "",
        *batched_lines(result.get("batched_vs_bare")),
        "SDK wire formats against the native one, same service, same run (rounds interleaved):",
        "",
        *protocol_comparison(result["load"]["service"]),
        "",
        f"Replication to ClickHouse caught up {result['replication_wait_s']} s after the "
        "load runs. Freshness (200 on POST /events until /metrics with plan=rollup counts "
        f"the event, 20 trials): p50 {result['freshness_ms']['p50']} ms, max "
        f"{result['freshness_ms']['max']} ms.",
        "",
    ]
    # Rebuilt from the JSON, so that summary.md stands alone.
    query_table = render_markdown(result["queries"]).replace("# Query benchmark", "## Queries")
    lines += [query_table, "## Commands", "", "```sh", *result["commands"], "```", ""]
    return "\n".join(lines)
