"""Import and export at scale, against a running service (issue #25).

    python -m bench.lifecycle --admin-url postgresql://postgres@127.0.0.1/postgres \
        [--events 10000000] [--shuffled] [--probe-rate 100] [--connections 2] \
        [--out docs/bench/lifecycle]

On a database of its own: writes an NDJSON file of `--events` events (90 days, 100,000
users; in time order as exports are, or `--shuffled`; kept under /tmp for the next run),
starts `event-metrics serve`, and sends it single events at `--probe-rate` per second,
each waiting for its commit as clients do: first alone, then while `event-metrics
import` loads the file, then while the rollup refresher folds what was imported.
Reported: the import's events/s (its own final line), the probe's p50/p99/max in each
phase, and how long folding took. Then GET /export streams the whole project, once read
as fast as possible and once by a client reading 2 MB/s, while the service's RSS is
sampled every 100 ms: the peak above the RSS before the export is what an export costs
in memory, whatever its size. The slow reader goes away after `--slow-read-s` (60 s):
the export then stops with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import psutil

from bench.run import BIN, Runner, free_port, reset_database, wait_http, with_database

NAMES = ("page_view", "product_view", "add_to_cart", "purchase", "signup")
CHANNELS = ("web", "ios", "android", "")


def write_file(path: Path, events: int, *, shuffled: bool, seed: int = 25) -> None:
    """Events shaped like the load tool's, with keys, over 90 days before now: in time
    order, as an export (ours, PostHog's batch exports, Segment's archives) has them, or
    shuffled."""
    if path.exists() and path.stat().st_size > 0:
        return
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    start = end - timedelta(days=90)
    step_us = (end - start) / timedelta(microseconds=1) / events
    order = list(range(events))
    if shuffled:
        rng.shuffle(order)
    encode = msgspec.json.Encoder().encode_lines
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        for first in range(0, events, 100_000):
            chunk = []
            for n in order[first : first + 100_000]:
                event: dict[str, Any] = {
                    "event_name": NAMES[n % 5],
                    "user_id": f"user-{rng.randrange(100_000)}",
                    "timestamp": (start + timedelta(microseconds=int(n * step_us))).isoformat(),
                    "idempotency_key": f"bench-{seed}-{n}",
                    "properties": {"seq": n, "price": round(rng.random() * 100, 2)},
                }
                if channel := CHANNELS[n % 4]:
                    event["channel"] = channel
                chunk.append(event)
            out.write(encode(chunk))
    partial.rename(path)


# Imported rows not folded yet: the probe's own events keep arriving, so "nothing left to
# fold" would never hold while it runs.
UNFOLDED = """
SELECT count(*) FROM events e, replication_state s
WHERE s.target = 'rollups' AND e.id <= $1 AND (e.txid, e.id) > (s.txid, s.last_id)
"""


async def folded(database_url: str, timeout_s: float = 3600) -> float:
    """Wait until the rollup refresher has folded every row stored so far."""
    started = time.monotonic()
    connection = await asyncpg.connect(database_url)
    try:
        last = await connection.fetchval("SELECT max(id) FROM events")
        while await connection.fetchval(UNFOLDED, last):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"rollups still behind after {timeout_s} s")
            await asyncio.sleep(0.5)
    finally:
        await connection.close()
    return time.monotonic() - started


class Probe:
    """Single events at a fixed rate; the latency of each, by phase."""

    def __init__(self, url: str, key: str, rate: float) -> None:
        self.url, self.key, self.rate = url, key, rate
        self.phase = "before"
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30) as client:
            pending: set[asyncio.Task[None]] = set()
            n = 0
            started = time.monotonic()
            while not self._stop.is_set():
                n += 1
                task = asyncio.create_task(self._one(client, n))
                pending.add(task)
                task.add_done_callback(pending.discard)
                delay = started + n / self.rate - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(delay, 0))
            await asyncio.gather(*pending)

    async def _one(self, client: httpx.AsyncClient, n: int) -> None:
        phase = self.phase
        event = {"event_name": "probe", "user_id": f"p{n}", "idempotency_key": uuid.uuid4().hex}
        sent = time.perf_counter()
        try:
            response = await client.post("/events", json=event)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            self.latencies.setdefault(phase, []).append((time.perf_counter() - sent) * 1000)
        else:
            self.errors[phase] = self.errors.get(phase, 0) + 1

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        out = {}
        for phase, values in self.latencies.items():
            ordered = sorted(values)
            out[phase] = {
                "requests": len(ordered),
                "errors": self.errors.get(phase, 0),
                "p50_ms": round(statistics.median(ordered), 1),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
                "max_ms": round(ordered[-1], 1),
            }
        return out


async def sample_rss(process: psutil.Process, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            samples.append(sum(p.memory_info().rss for p in [process, *process.children(True)]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def stream_export(
    url: str,
    key: str,
    process: psutil.Process,
    *,
    bytes_per_s: float | None,
    for_s: float | None = None,
) -> dict[str, Any]:
    """GET /export read whole (or at a bounded rate, for at most `for_s` seconds, then
    the client goes away), with the service's RSS meanwhile."""
    samples: list[int] = []
    stop = asyncio.Event()
    before = process.memory_info().rss
    sampler = asyncio.create_task(sample_rss(process, samples, stop))
    received = lines = 0
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
    async with (
        httpx.AsyncClient(base_url=url, timeout=600) as client,
        client.stream("GET", "/export", headers=headers) as response,
    ):
        async for chunk in response.aiter_raw(65536):
            received += len(chunk)
            lines += chunk.count(b"\n")
            if bytes_per_s and received / bytes_per_s > time.monotonic() - started:
                await asyncio.sleep(received / bytes_per_s - (time.monotonic() - started))
            if for_s and time.monotonic() - started > for_s:
                break
    seconds = time.monotonic() - started
    stop.set()
    await sampler
    return {
        "events": lines,
        "megabytes": round(received / 1e6, 1),
        "seconds": round(seconds, 1),
        "events_per_s": round(lines / seconds),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_peak_mib": round(max(samples, default=before) / 2**20, 1),
    }


async def bench(args: argparse.Namespace, runner: Runner) -> dict[str, Any]:
    order = "shuffled" if args.shuffled else "in-time-order"
    path = Path(f"/tmp/em-lifecycle-{args.events}-{order}.ndjson")
    print(f"writing {path} ...", file=sys.stderr, flush=True)
    write_file(path, args.events, shuffled=args.shuffled)
    name = f"em_lifecycle_{uuid.uuid4().hex[:6]}"
    await reset_database(args.admin_url, name, create=True)
    database_url = with_database(args.admin_url, name)
    env = {"EVENT_METRICS_DATABASE_URL": database_url}
    cli = str(BIN / "event-metrics")
    try:
        runner.run([cli, "migrate"], env=env, timeout=120)
        made = json.loads(runner.run([cli, "projects", "create", "bench", "--json"], env=env,
                                     timeout=60))  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve_env = {**env, "EVENT_METRICS_PORT": str(port)}
        if args.clickhouse_url:
            serve_env["EVENT_METRICS_CLICKHOUSE_URL"] = args.clickhouse_url
        server = runner.start("serve", [cli, "serve"], env=serve_env)
        wait_http(f"{url}/health", server, runner.workdir / "serve.log")
        probe = Probe(url, made["write_key"], args.probe_rate)
        probing = asyncio.create_task(probe.run())
        await asyncio.sleep(args.baseline_s)

        probe.phase = "during import"
        argv = [cli, "import", "--project", "bench", "--connections", str(args.connections),
                str(path)]  # fmt: skip
        runner.commands.append(" ".join([f"{k}={v}" for k, v in env.items()] + argv))
        importing = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **env},
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await importing.communicate()
        text = err.decode()
        last = [line for line in re.split(r"[\r\n]", text) if "events read" in line][-1:]
        print(text[-2000:], file=sys.stderr)

        probe.phase = "while folding"
        print("waiting for the rollups to fold the import ...", file=sys.stderr, flush=True)
        folded_s = await folded(database_url)
        probe.phase = "after"
        await asyncio.sleep(args.baseline_s)
        probe.stop()
        await probing

        process = psutil.Process(server.pid)
        print("exporting ...", file=sys.stderr, flush=True)
        fast = await stream_export(url, made["read_key"], process, bytes_per_s=None)
        slow = await stream_export(
            url, made["read_key"], process, bytes_per_s=2e6, for_s=args.slow_read_s
        )
        runner.stop(server)
        return {
            "events": args.events,
            "file_order": order,
            "connections": args.connections,
            "import": last[0] if last else text[-500:],
            "import_exit": importing.returncode,
            "fold_after_import_s": round(folded_s, 1),
            "probe_rate": args.probe_rate,
            "probe": probe.summary(),
            "export_fast": fast,
            "export_slow_reader": slow,
            "commands": runner.commands,
        }
    finally:
        runner.stop_all()
        if not args.keep:
            await reset_database(args.admin_url, name, create=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    parser.add_argument("--clickhouse-url", help="also replicate to this ClickHouse")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--shuffled", action="store_true", help="events not in time order")
    parser.add_argument("--probe-rate", type=float, default=100.0)
    parser.add_argument("--baseline-s", type=float, default=15.0)
    parser.add_argument(
        "--slow-read-s",
        type=float,
        default=60.0,
        help="how long the 2 MB/s reader reads before it goes away",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--out", type=Path, help="write <out>.json")
    args = parser.parse_args(argv)
    # The machine is shared: the load when the run began says what the numbers met.
    started_load = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(f"/tmp/em-lifecycle-{uuid.uuid4().hex[:6]}")
    workdir.mkdir()
    result = asyncio.run(bench(args, Runner(workdir)))
    result["load_average_at_start"] = started_load
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
