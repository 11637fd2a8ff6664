"""End-to-end benchmark: fresh database, seed, serve, ingest load, queries, report.

    python -m bench.run --rows 1000000 --load-total 20000 [--out docs/bench] [--keep-db]

Creates the PostgreSQL database `event_metrics_bench` (dropped first if it exists), starts
a throwaway ClickHouse (throwaway/clickhouse.py) in a temporary folder, migrates, seeds
(bench.seed), starts `event-metrics serve`, runs bench.load against it and against the
no-op app (bench.noop), runs bench.queries, and writes summary.md and summary.json (plus
queries.*) to --out. Every server it started is stopped, and the database dropped, on the
way out, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from throwaway.clickhouse import ClickHouseServer

from bench import wrk
from bench.seed import clickhouse_client
from bench.summary import machine_info, render_summary

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

STOP_GRACE_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class Runner:
    """Runs commands, records them, and owns the servers it starts (one group each)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.commands: list[str] = []
        self.servers: list[subprocess.Popen[bytes]] = []

    def _record(self, argv: list[str], env: dict[str, str]) -> None:
        shown = [f"{k}={v}" for k, v in env.items()] + [
            a.replace(str(BIN) + "/", ".venv/bin/") for a in argv
        ]
        self.commands.append(shlex.join(shown))

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float) -> str:
        """Run to completion (stderr passes through); return stdout; raise on failure."""
        self._record(argv, env or {})
        print(f"\n$ {self.commands[-1]}", file=sys.stderr, flush=True)
        done = subprocess.run(
            argv, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=subprocess.PIPE,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode not in (0, 1):  # 1 = ran, but found a problem it reported
            raise RuntimeError(f"{argv[:3]} exited with {done.returncode}")
        return done.stdout.decode()

    def start(self, name: str, argv: list[str], *, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a server in its own process group, logging to workdir/<name>.log."""
        self._record(argv, env)
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.servers.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, then SIGKILL it after STOP_GRACE_S."""
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_s)
        # Children that outlived their leader (e.g. uvicorn workers) are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.servers:
            self.servers.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.servers[:]):
            self.stop(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Poll url until it answers 200; fail with the log tail if the server dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url} server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s:\n{log.read_text()[-3000:]}")


def wait_replicated(base_url: str, timeout_s: float = 180, *, rollups: bool = False) -> float:
    """Wait until /health reports no replication lag (and with `rollups`, nothing left to
    fold either); return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            health = json.loads(response.read())
        replication = health.get("replication") or {}
        folded = not rollups or (health.get("rollups") or {}).get("lag_rows") == 0
        if replication.get("state") == "running" and replication.get("lag_rows") == 0 and folded:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"replication or rollups still lagging after {timeout_s}s: {health}")


PENDING_FOLD = """
SELECT count(*) FROM events e, replication_state s
WHERE s.target = 'rollups' AND (e.txid, e.id) > (s.txid, s.last_id)
"""


def wait_folded(database_url: str, timeout_s: float = 300) -> float:
    """Wait until the rollup refresher has folded every event; return how long it took."""

    async def pending() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            count: int = await connection.fetchval(PENDING_FOLD)
            return count
        finally:
            await connection.close()

    started = time.monotonic()
    while asyncio.run(pending()):
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"rollups still behind after {timeout_s}s")
        time.sleep(0.5)
    return time.monotonic() - started


def load_runs(total: int) -> list[tuple[str, list[str]]]:
    """The ingest runs: the reference's paced run, unpaced single events, unpaced batches."""
    return [
        ("reference (-rate 2000)", ["-total", str(total), "-rate", "2000"]),
        ("max, single events", ["-total", str(total), "-rate", "0"]),
        ("max, -batch 1000", ["-total", str(total * 10), "-rate", "0", "-batch", "1000"]),
    ]


PROTOCOL_ROUNDS = 3


def protocol_runs(total: int) -> list[tuple[str, list[str]]]:
    """Batches of 100 in each wire format, interleaved round by round, so that the
    comparison is not skewed by what the machine or the table did meanwhile."""
    runs = []
    for round_ in range(1, PROTOCOL_ROUNDS + 1):
        for protocol in ("native", "segment", "posthog"):
            flags = ["-total", str(total * 5), "-rate", "0", "-batch", "100"]
            runs.append(
                (f"-protocol {protocol} -batch 100 #{round_}", [*flags, "-protocol", protocol])
            )
    return runs


def run_loads(
    runner: Runner, url: str, total: int, keys: dict[str, str], *, protocols: bool = False
) -> list[dict[str, Any]]:
    results = []
    auth = ["-key", keys["write"], "-read-key", keys["read"]]
    for name, flags in load_runs(total) + (protocol_runs(total) if protocols else []):
        out = runner.run(
            [sys.executable, "-m", "bench.load", "-url", url, *flags, *auth, "--json", "-quiet"],
            timeout=600,
        )
        results.append({"name": name, "flags": flags, **json.loads(out)})
    return results


WRK_ROUNDS = 3
WRK_WORKERS = (1, 2)
WRK_BATCH = 1000


def wrk_comparison(
    runner: Runner, cli: str, env: dict[str, str], keys: dict[str, str], *, batch: int | None = None
) -> list[dict[str, Any]]:
    """Under wrk, the service against the no-op app, rounds interleaved: single events on
    one and on two HTTP worker processes, or (`batch`) batched requests on one. Each
    service starts once the replicator and the rollups have caught up with earlier runs,
    so it pays only for its own traffic."""
    results = []
    for workers in WRK_WORKERS if batch is None else (1,):
        ports = {"service": free_port(), "noop": free_port()}
        label = f"wrk-{workers}" if batch is None else f"wrk-batch-{batch}"
        servers = {
            "service": runner.start(
                f"service-{label}", [cli, "serve"],
                env={**env, "EVENT_METRICS_PORT": str(ports["service"]),
                     "EVENT_METRICS_HTTP_WORKERS": str(workers)},
            ),
            "noop": runner.start(
                f"noop-{label}",
                [sys.executable, "-m", "bench.noop", "--port", str(ports["noop"]),
                 "--workers", str(workers)],
                env={},
            ),
        }  # fmt: skip
        for name, proc in servers.items():
            wait_http(f"http://127.0.0.1:{ports[name]}/health", proc,
                      runner.workdir / f"{name}-{label}.log")  # fmt: skip
        wait_replicated(f"http://127.0.0.1:{ports['service']}", 600, rollups=True)
        rounds: dict[str, list[dict[str, Any]]] = {"service": [], "noop": []}
        for _ in range(WRK_ROUNDS):
            for name, proc in servers.items():
                url = f"http://127.0.0.1:{ports[name]}"
                if batch is None:
                    result = wrk.run(url, key=keys["write"], pid=proc.pid)
                else:  # 8 connections, as bench.batched_vs_bare gives bare asyncpg
                    result = wrk.run(
                        url, key=keys["write"], connections=8, batch=batch, pid=proc.pid
                    )
                shown = f"WRK_BATCH={batch} " if batch else ""
                runner.commands.append(
                    f"WRK_AUTH='Bearer $WRITE_KEY' {shown}wrk {result['command']}"
                )
                rounds[name].append(result)
        for proc in servers.values():
            runner.stop(proc)
        results.append({"workers": workers, "batch": batch, "rounds": rounds})
    return results


def batched_vs_bare(runner: Runner, cli: str, env: dict[str, str], key: str) -> dict[str, Any]:
    """Batched ingest through the service (wrk) against bare asyncpg, ABBA rounds, on the
    same table. The service has PostgreSQL only here: bare asyncpg does no replicating."""
    database_url = env["EVENT_METRICS_DATABASE_URL"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = runner.start(
        "service-postgres-only", [cli, "serve"],
        env={"EVENT_METRICS_DATABASE_URL": database_url, "EVENT_METRICS_PORT": str(port)},
    )  # fmt: skip
    wait_http(f"{url}/health", service, runner.workdir / "service-postgres-only.log")
    wait_folded(database_url)  # this service's refresher folds what earlier runs left
    argv = ["--url", url, "--key", key, "--database-url", database_url, "--rounds", "3"]
    out = runner.run([sys.executable, "-m", "bench.batched_vs_bare", *argv], timeout=900)
    runner.commands[-1] = runner.commands[-1].replace(key, "$WRITE_KEY")
    runner.stop(service)
    result: dict[str, Any] = json.loads(out)
    return result


def measure_freshness(base_url: str, keys: dict[str, str], trials: int = 20) -> dict[str, float]:
    """Milliseconds from a 200 on POST /events until /metrics (rollup plan) counts it."""
    delays = []
    for trial in range(trials):
        name = f"fresh_{os.getpid()}_{trial}"
        now = datetime.now(UTC)
        event = {"event_name": name, "user_id": "u", "timestamp": now.isoformat()}
        window = {
            "from": (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "to": (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _http("POST", f"{base_url}/events", keys["write"], event)
        acked = time.monotonic()
        query = urllib.parse.urlencode({**window, "event_name": name, "plan": "rollup"})
        while _http("GET", f"{base_url}/metrics?{query}", keys["read"])["total"]["events"] != 1:
            if time.monotonic() - acked > 10:
                raise RuntimeError(f"event {name} not visible after 10 s")
        delays.append((time.monotonic() - acked) * 1000)
    delays.sort()
    return {"p50": round(delays[len(delays) // 2], 2), "max": round(delays[-1], 2)}


def _http(method: str, url: str, key: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def reset_database(admin_url: str, name: str, *, create: bool) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def benchmark(
    args: argparse.Namespace, runner: Runner, stack: contextlib.ExitStack
) -> dict[str, Any]:
    database_url = with_database(args.admin_url, args.database)
    asyncio.run(reset_database(args.admin_url, args.database, create=True))
    if not args.keep_db:
        stack.callback(
            lambda: asyncio.run(reset_database(args.admin_url, args.database, create=False))
        )
    clickhouse = ClickHouseServer(runner.workdir / "clickhouse")
    clickhouse.start()
    stack.callback(clickhouse.stop)
    stack.callback(runner.stop_all)  # runs before clickhouse.stop: the service goes first

    env = {
        "EVENT_METRICS_DATABASE_URL": database_url,
        "EVENT_METRICS_CLICKHOUSE_URL": clickhouse.url,
    }
    cli = str(BIN / "event-metrics")
    runner.run([cli, "migrate"], env=env, timeout=120)
    seed_argv = ["--database-url", database_url, "--clickhouse-url", clickhouse.url]
    seeded = json.loads(
        runner.run(
            [sys.executable, "-m", "bench.seed", *seed_argv, "--rows", str(args.rows), "--json"],
            timeout=3600,
        )
    )

    # The seeded events are the project 'default''s: the tools get its keys.
    keys = {
        scope: json.loads(
            runner.run(
                [cli, "keys", "create", "--project", "default", "--scope", scope, "--json"],
                env=env, timeout=120,
            )
        )["key"]
        for scope in ("write", "read")
    }  # fmt: skip
    started = time.monotonic()
    runner.run([cli, "rebuild-rollups"], env=env, timeout=3600)
    rollup_rebuild_s = time.monotonic() - started

    # Ingest without rollups first (a service with no refresher), for the comparison.
    bare_port = free_port()
    bare_url = f"http://127.0.0.1:{bare_port}"
    bare = runner.start(
        "service-no-rollups",
        [cli, "serve"],
        env={**env, "EVENT_METRICS_PORT": str(bare_port), "EVENT_METRICS_ROLLUPS": "false"},
    )
    wait_http(f"{bare_url}/health", bare, runner.workdir / "service-no-rollups.log")
    bare_loads = run_loads(runner, bare_url, args.load_total, keys)
    runner.stop(bare)

    port = args.port or free_port()
    service_url = f"http://127.0.0.1:{port}"
    service = runner.start("service", [cli, "serve"], env={**env, "EVENT_METRICS_PORT": str(port)})
    wait_http(f"{service_url}/health", service, runner.workdir / "service.log")
    # The no-rollups run left events to fold; let the refresher catch up before measuring.
    fold_wait_s = wait_folded(database_url)
    service_loads = run_loads(runner, service_url, args.load_total, keys, protocols=True)
    freshness = measure_freshness(service_url, keys)
    runner.stop(service)  # the wrk runs start their own, on one and on two workers
    wrk_runs = wrk_comparison(runner, cli, env, keys)
    wrk_runs += wrk_comparison(runner, cli, env, keys, batch=WRK_BATCH)
    batched = batched_vs_bare(runner, cli, env, keys["write"])
    service = runner.start("service", [cli, "serve"], env={**env, "EVENT_METRICS_PORT": str(port)})
    wait_http(f"{service_url}/health", service, runner.workdir / "service.log")
    # Millions of rows from the runs above: copied and folded before the no-op app is
    # measured beside this service, not while.
    wait_replicated(service_url, 1800, rollups=True)

    noop_port = free_port()
    noop_url = f"http://127.0.0.1:{noop_port}"
    noop = runner.start(
        "noop", [sys.executable, "-m", "bench.noop", "--port", str(noop_port)], env={}
    )
    wait_http(f"{noop_url}/health", noop, runner.workdir / "noop.log")
    noop_loads = run_loads(runner, noop_url, args.load_total, keys)
    runner.stop(noop)

    # The load's rows are outside the query windows, but replicating them would compete
    # with the queries for the CPU.
    replication_wait_s = wait_replicated(service_url)
    queries_out = runner.run(
        [
            sys.executable, "-m", "bench.queries", "--url", service_url,
            "--database-url", database_url, "--clickhouse-url", clickhouse.url,
            "--windows", args.windows, "--runs", str(args.runs), "--out", str(args.out), "--json",
            "--read-key", keys["read"],
        ],
        timeout=3600,
    )  # fmt: skip
    versions = _server_versions(database_url, clickhouse.url)
    return {
        "started_at": args.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(versions),
        "commands": runner.commands,
        "seed": seeded,
        "rollup_rebuild_s": round(rollup_rebuild_s, 1),
        "fold_wait_s": round(fold_wait_s, 1),
        "freshness_ms": freshness,
        "load": {"service": service_loads, "service-no-rollups": bare_loads, "noop": noop_loads},
        "wrk": wrk_runs,
        "batched_vs_bare": batched,
        "replication_wait_s": round(replication_wait_s, 2),
        "queries": json.loads(queries_out),
    }


def _server_versions(database_url: str, clickhouse_url: str) -> dict[str, str]:
    async def postgres() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    client = clickhouse_client(clickhouse_url)
    try:
        clickhouse = str(client.execute("SELECT version()")[0][0])
    finally:
        client.disconnect()
    return {"postgresql": asyncio.run(postgres()), "clickhouse": clickhouse}


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="event-metrics-bench-") as folder:
        yield Path(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="events to seed")
    p.add_argument("--load-total", type=int, default=20_000, help="events per load run")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="event_metrics_bench")
    p.add_argument("--port", type=int, default=0, help="service port (0 = any free port)")
    p.add_argument("--windows", default="1,7,30,90")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    args = p.parse_args(argv)
    args.started_at = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    with workspace() as folder, contextlib.ExitStack() as stack:
        runner = Runner(folder)
        try:
            result = benchmark(args, runner, stack)
        except BaseException:
            for log in sorted(folder.glob("*.log")):
                print(f"--- {log.name} (tail) ---\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = render_summary(result)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
