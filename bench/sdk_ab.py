"""SDK batches against native ones, with wrk, in interleaved rounds: for each SDK, a batch of
N events as that SDK sends it (bench.sdk_shapes, from its recorded requests) and the same
N events as a POST /events batch, one after the other, round after round, against one
running service, or several (two checkouts of the code, for before and after). Prints
one JSON object per SDK and target: events/s per round, the ratio of medians, and the
CPU per event of the service's processes (found by the port they listen on).

    python -m bench.sdk_ab --url http://127.0.0.1:8080 --key emw_... \\
        [--sdk analytics-python ...] [--rounds 3] [-c 8] [-d 10] [--batch 100]
    python -m bench.sdk_ab --url before=http://127.0.0.1:8401 --url now=http://127.0.0.1:8402 ...

With several targets (they must accept the same key: one database behind both), each round
runs every target's native and SDK batch, the order of targets and of native and SDK
reversed every other round, so a machine that slows down mid-run shifts none of them.
Each run gets bodies no earlier run sent (fresh message ids), so every event is new.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.sdk_shapes import SHAPES, write_bodies
from bench.wrk import find_wrk

SCRIPT = Path(__file__).parent / "wrk" / "sdk_batch.lua"


def wrk_run(url: str, bodies: Path, *, connections: int, duration_s: int) -> dict[str, Any]:
    argv = [find_wrk(), "-t1", f"-c{connections}", f"-d{duration_s}s", "-s", str(SCRIPT),
            url.rstrip("/")]  # fmt: skip
    env = {**os.environ, "WRK_BODIES": str(bodies)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("JSON "))
    return result


def wait_until_up(url: str, timeout_s: float = 60) -> None:
    """Until GET /health answers (a server just started may still be migrating)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def serving(url: str) -> list[psutil.Process]:
    """The process listening on the URL's port and its children (empty if not found: the
    CPU figures are then left out)."""
    port = urllib.parse.urlsplit(url).port
    for connection in psutil.net_connections("tcp"):
        if connection.status == "LISTEN" and connection.laddr.port == port and connection.pid:
            root = psutil.Process(connection.pid)
            while root.parent() is not None and root.parent().name() == root.name():
                root = root.parent()  # the main process of a multi-worker server
            return [root, *root.children(recursive=True)]
    return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measured_run(url: str, bodies: Path, *, connections: int, duration_s: int,
                 batch: int) -> dict[str, Any]:  # fmt: skip
    """wrk's summary plus the service's and PostgreSQL's CPU per event (PostgreSQL: all
    its processes on the machine, so only meaningful when nothing else uses it)."""
    service = serving(url)
    postgres = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    before = cpu_seconds(service), cpu_seconds(postgres)
    result = wrk_run(url, bodies, connections=connections, duration_s=duration_s)
    events = max(1, result["requests"] * batch)
    if service:
        result["service_cpu_us"] = round((cpu_seconds(service) - before[0]) / events * 1e6, 2)
    result["postgres_cpu_us"] = round((cpu_seconds(postgres) - before[1]) / events * 1e6, 2)
    return result


def _median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if field in r]
    return round(statistics.median(values), 2) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sdk_ab", description=__doc__.splitlines()[0])
    p.add_argument("--url", action="append", help="[NAME=]URL; repeat to interleave servers")
    p.add_argument("--key", required=True, help="a write key")
    p.add_argument("--sdk", action="append", choices=sorted(SHAPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("-c", "--connections", type=int, default=8)
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds per run")
    p.add_argument("--bodies", type=int, default=1500, help="distinct bodies per run")
    args = p.parse_args(argv)
    targets = dict(
        (spec.split("=", 1) if "=" in spec.split("://", 1)[0] else ("service", spec))
        for spec in args.url or ["http://127.0.0.1:8080"]
    )
    report: dict[str, Any] = {
        "command": f"wrk -t1 -c{args.connections} -d{args.duration}s -s {SCRIPT.name}, "
        f"batches of {args.batch}, {args.rounds} interleaved rounds",
        "sdks": {},
    }
    for url in targets.values():
        wait_until_up(url)
    with tempfile.TemporaryDirectory() as folder:
        for sdk in args.sdk or sorted(SHAPES):
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {
                (t, k): [] for t in targets for k in ("native", "sdk")
            }
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(targets)[::-1]
                kinds = [("native", f"native:{sdk}"), ("sdk", sdk)]
                for target in order:
                    for kind, name in kinds if round_ % 2 == 0 else kinds[::-1]:
                        bodies = Path(folder) / kind
                        write_bodies(name, key=args.key, batch=args.batch, count=args.bodies,
                                     out=bodies)  # fmt: skip
                        runs[target, kind].append(measured_run(
                            targets[target], bodies, connections=args.connections,
                            duration_s=args.duration, batch=args.batch,
                        ))  # fmt: skip
            report["sdks"][sdk] = {}
            for target in targets:
                native, theirs = runs[target, "native"], runs[target, "sdk"]
                n_rates = [r["events_per_s"] for r in native]
                s_rates = [r["events_per_s"] for r in theirs]
                summary = {
                    "native_events_per_s": n_rates,
                    "sdk_events_per_s": s_rates,
                    "ratio_of_medians": round(
                        statistics.median(s_rates) / statistics.median(n_rates), 3
                    ),
                    "round_ratios": [
                        round(s / n, 3) for s, n in zip(s_rates, n_rates, strict=True)
                    ],
                    "sdk_p99_ms": [r["p99_ms"] for r in theirs],
                    "native_p99_ms": [r["p99_ms"] for r in native],
                    "service_cpu_us": {"native": _median(native, "service_cpu_us"),
                                       "sdk": _median(theirs, "service_cpu_us")},
                    "postgres_cpu_us": {"native": _median(native, "postgres_cpu_us"),
                                        "sdk": _median(theirs, "postgres_cpu_us")},
                    "errors": sum(r["errors"] for r in native + theirs),
                }  # fmt: skip
                report["sdks"][sdk][target] = summary
                print(json.dumps({sdk: {target: summary}}), flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
