"""Variants of the service (settings, or another checkout's code) and the no-op app under
wrk, single events, rounds interleaved, each variant on a fresh database of its own.

    python -m bench.ab --workers 2 --noop \\
        --variant before@/tmp/old-checkout/src --variant now \\
        --variant one-writer:EVENT_METRICS_WRITER_COUNT=1 \\
        [--clickhouse-url clickhouse://default@127.0.0.1:9000/default] [--rounds 3]

A variant is NAME[:VAR=VALUE,...][@PYTHONPATH]: the PYTHONPATH puts another checkout's
`src` in front of this one (e.g. a `git worktree` of an older commit). With
--clickhouse-url each variant replicates into a ClickHouse database of its own. Reports
events/s, wrk's p50/p99, the CPU per event (utime + stime from /proc) of the service's
HTTP processes, of all PostgreSQL processes, of its replicator child and of the
ClickHouse server, and peak RSS; alternating the order
of the variants from round to round. With --batch N each request carries N events, over
8 connections (the batched path; the no-op app answers them without reading the events).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from clickhouse_driver import Client

from bench import wrk
from bench.run import wait_http

CLI = [sys.executable, "-m", "event_metrics.cli"]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def processes_named(prefix: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith(prefix)]


def is_replicator(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return "replicate" in process.cmdline()
    return False


class Variant:
    def __init__(self, spec: str, args: argparse.Namespace, port: int) -> None:
        spec, _, self.pythonpath = spec.partition("@")
        self.name, _, assignments = spec.partition(":")
        self.env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.database = f"em_ab_{self.name.replace('-', '_')}"
        self.process: subprocess.Popen[bytes] | None = None
        self.key: str | None = None
        self.log = Path(tempfile.gettempdir()) / f"bench-ab-{self.name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start the server, its stderr in self.log, and wait until /health answers."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stderr=log, start_new_session=True)
        wait_http(f"{self.url}/health", self.process, self.log)

    def start(self) -> None:
        admin = self.args.admin_url.rsplit("/", 1)[0]
        database_url = f"{admin}/{self.database}"
        maintenance = f"--maintenance-db={self.args.admin_url}"
        subprocess.run(["dropdb", maintenance, "--if-exists", "--force", self.database],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(["createdb", maintenance, self.database], check=True, capture_output=True)
        env = {**os.environ, "EVENT_METRICS_DATABASE_URL": database_url,
               "EVENT_METRICS_PORT": str(self.port),
               "EVENT_METRICS_HTTP_WORKERS": str(self.args.workers),
               "EVENT_METRICS_LOG_LEVEL": "warning", **self.env}  # fmt: skip
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        if self.args.clickhouse_url:
            client = Client.from_url(self.args.clickhouse_url)
            name = f"ab_{self.name.replace('-', '_')}"
            client.execute(f"DROP DATABASE IF EXISTS {name}")
            client.execute(f"CREATE DATABASE {name}")
            client.disconnect()
            env["EVENT_METRICS_CLICKHOUSE_URL"] = (
                self.args.clickhouse_url.rsplit("/", 1)[0] + "/" + name
            )
        subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True)
        made = subprocess.run([*CLI, "keys", "create", "--project", "default", "--scope", "write",
                               "--json"], env=env, check=True, capture_output=True)  # fmt: skip
        self.key = json.loads(made.stdout)["key"]
        self.spawn([*CLI, "serve"], env)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        subprocess.run(["dropdb", f"--maintenance-db={self.args.admin_url}", "--if-exists",
                        "--force", self.database], capture_output=True)  # fmt: skip


class Noop(Variant):
    def __init__(self, args: argparse.Namespace, port: int) -> None:
        super().__init__("noop", args, port)

    def start(self) -> None:
        self.spawn([sys.executable, "-m", "bench.noop", "--port", str(self.port),
                    "--workers", str(self.args.workers)])  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)


def measure(variant: Variant, duration_s: int, batch: int | None = None) -> dict[str, Any]:
    assert variant.process is not None
    processes = tree(variant.process.pid)
    groups = {
        "service": [p for p in processes if not is_replicator(p)],
        "replicator": [p for p in processes if is_replicator(p)],
        "postgres": processes_named("postgres"),
        "clickhouse": processes_named("clickhouse"),
    }
    before = {name: cpu_seconds(group) for name, group in groups.items()}
    result = wrk.run(variant.url, key=variant.key, duration_s=duration_s, pid=variant.process.pid,
                     batch=batch, connections=64 if batch is None else 8)  # fmt: skip
    events = result["requests"] * (batch or 1)
    for name, group in groups.items():
        spent = cpu_seconds(group) - before[name]
        result[f"{name}_cpu_us"] = round(spent / events * 1e6, 2)
    result["events_per_s"] = result["rps"] * (batch or 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ab", description=__doc__.splitlines()[0])
    p.add_argument(
        "--variant", action="append", default=[], help="NAME[:VAR=VALUE,...][@PYTHONPATH]"
    )
    p.add_argument("--noop", action="store_true", help="also the no-op app (bench.noop)")
    p.add_argument("--workers", type=int, default=1, help="HTTP worker processes of each")
    p.add_argument(
        "--clickhouse-url", help="replicate each variant into a database of its own there"
    )
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--first-port", type=int, default=8400)
    p.add_argument(
        "--batch", type=int, help="events per request (8 connections, as bench.batched_vs_bare)"
    )
    args = p.parse_args(argv)
    variants: list[Variant] = [Variant(spec, args, args.first_port + n)
                               for n, spec in enumerate(args.variant)]  # fmt: skip
    if args.noop:
        variants.append(Noop(args, args.first_port + len(variants)))
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    try:
        for variant in variants:
            variant.start()
        time.sleep(2)
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                results[variant.name].append(measure(variant, args.duration, args.batch))
                time.sleep(1)
    finally:
        for variant in variants:
            variant.stop()
    print(json.dumps(results), file=sys.stderr)
    print(
        "| variant | events/s, median (min–max) | p99 ms | service CPU / event "
        "| PostgreSQL CPU / event | replicator + ClickHouse CPU / event | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        rates = [r["events_per_s"] for r in runs]
        print(f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) "
              f"| {statistics.median(r['p99_ms'] for r in runs):.1f} "
              f"| {statistics.median(r['service_cpu_us'] for r in runs):.1f} µs "
              f"| {statistics.median(r['postgres_cpu_us'] for r in runs):.1f} µs "
              f"| {statistics.median(r['replicator_cpu_us'] for r in runs):.1f} + "
              f"{statistics.median(r['clickhouse_cpu_us'] for r in runs):.1f} µs "
              f"| {max(r['peak_rss_mib'] or 0 for r in runs):.0f} MiB |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
