"""Where a single event's request time goes, under wrk: timestamps from the service's own
histograms, and CPU by part of the code from py-spy.

    python -m bench.breakdown --url http://127.0.0.1:8080 --key emw_... --pid PID [--py-spy]

Runs wrk (bench/wrk/single_event.lua) against a running service with one HTTP worker and
reads GET /internal/metrics before and after. The writer histograms give the wait from
the queue to the commit and the commit itself; wrk gives what the client saw; the rest
is reading, parsing and answering the request, and waiting for the event loop. With
--py-spy, the service is sampled meanwhile and each sample is charged to the part of the
code it is in. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from pathlib import Path

from bench import wrk

# Samples are charged to the innermost frame in one of these parts (first match wins).
PARTS = (
    ("PostgreSQL client (asyncpg)", ("asyncpg/",)),
    ("writer and queue", ("event_metrics/writer.py", "event_metrics/queue.py")),
    ("metrics (Prometheus)", ("prometheus_client/", "event_metrics/telemetry.py")),
    ("parse, check and answer events", (
        "event_metrics/payload.py", "event_metrics/events.py", "event_metrics/ingest.py",
        "event_metrics/json_checks.py", "event_metrics/auth.py", "event_metrics/routes.py",
        "msgspec/",
    )),
    ("Litestar (routing, exception layer)", ("litestar/",)),
    ("HTTP server (uvicorn, httptools, edge)", (
        "uvicorn/", "httptools/", "event_metrics/http_server.py", "event_metrics/edge.py",
        "event_metrics/request_ids.py",
    )),
)  # fmt: skip
SERIES = re.compile(r"^(event_metrics_\w+?)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def scrape(url: str) -> dict[str, float]:
    """The service's counters and histogram sums and counts (labels summed away)."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/internal/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for name, value in SERIES.findall(text):
        values[name] = values.get(name, 0.0) + float(value)
    return values


def part_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "event loop and the rest"


def cpu_shares(path: Path) -> dict[str, float]:
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples[part_of(stack)] += int(count)
    total = sum(samples.values()) or 1
    return {part: 100 * n / total for part, n in samples.most_common()}


def measure(
    url: str, key: str | None, pid: int, *, connections: int, duration_s: int, py_spy: bool
) -> dict[str, object]:
    before = scrape(url)
    cpu_before = _cpu_seconds(pid)
    profile = Path(tempfile.mkdtemp(prefix="breakdown-")) / "samples.txt"
    spy = None
    if py_spy:
        # The bench extra installs it beside this interpreter, which need not be on PATH.
        binary = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
        if binary is None:
            raise SystemExit("py-spy is not installed (pip install py-spy; the bench extra has it)")
        spy = threading.Thread(target=subprocess.run, args=([
            binary, "record", "--pid", str(pid), "--rate", "250", "--duration",
            str(duration_s), "--format", "raw", "--nonblocking", "--output", str(profile),
        ],), kwargs={"capture_output": True}, daemon=True)  # fmt: skip
        spy.start()
    client = wrk.run(url, key=key, connections=connections, duration_s=duration_s, pid=pid)
    if spy is not None:
        spy.join()
    cpu = _cpu_seconds(pid) - cpu_before
    after = scrape(url)
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    commits = delta["event_metrics_writer_commit_seconds_count"] or 1
    acks = delta["event_metrics_ingest_ack_seconds_count"] or 1
    result: dict[str, object] = {
        "wrk": client,
        "cpu_us_per_request": 1e6 * cpu / max(client["requests"], 1),
        "mean_ms": {
            "client (wrk)": client["mean_ms"],
            "queue to commit (ingest_ack_seconds)":
                1000 * delta["event_metrics_ingest_ack_seconds_sum"] / acks,
            "INSERT and COMMIT of a batch (writer_commit_seconds)":
                1000 * delta["event_metrics_writer_commit_seconds_sum"] / commits,
        },
        "events_per_commit": delta["event_metrics_writer_commit_rows_sum"] / commits,
        "commits_per_s": commits / duration_s,
    }  # fmt: skip
    if py_spy and profile.exists():
        result["cpu_share_percent"] = cpu_shares(profile)
    return result


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render(result: dict[str, object]) -> str:
    client = result["wrk"]
    assert isinstance(client, dict)
    means = result["mean_ms"]
    assert isinstance(means, dict)
    total = means["client (wrk)"]
    ack = means["queue to commit (ingest_ack_seconds)"]
    commit = means["INSERT and COMMIT of a batch (writer_commit_seconds)"]
    rows = [
        ("what the client waits (wrk, mean)", total),
        ("  in the queue until a writer is free (ack - commit)", max(ack - commit, 0.0)),
        ("  INSERT ... ON CONFLICT and COMMIT (fsync)", commit),
        ("  read, parse, answer; waiting for the event loop (rest)", max(total - ack, 0.0)),
    ]
    lines = [
        f"{client['rps']:,.0f} requests/s, p50 {client['p50_ms']} ms, p99 {client['p99_ms']} ms; "
        f"{result['events_per_commit']:.1f} events per commit, "
        f"{result['commits_per_s']:,.0f} commits/s; "
        f"service CPU {result['cpu_us_per_request']:.0f} us per request",
        "",
        "| where a request's time goes | mean ms |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in rows),
    ]
    shares = result.get("cpu_share_percent")
    if isinstance(shares, dict):
        lines += ["", "| service CPU (py-spy samples) | share |", "|---|---|"]
        lines += [f"| {part} | {share:.0f}% |" for part, share in shares.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.breakdown", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", default=os.environ.get("WRITE_KEY"), help="write key ($WRITE_KEY)")
    p.add_argument("--pid", type=int, required=True, help="the service's (one worker) process")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds")
    p.add_argument("--py-spy", action="store_true", help="also sample the service's CPU")
    args = p.parse_args(argv)
    result = measure(args.url, args.key, args.pid, connections=args.connections,
                     duration_s=args.duration, py_spy=args.py_spy)  # fmt: skip
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
