"""Heavy reads against ingest: does a storm of expensive /metrics requests starve writes?

    python -m bench.storm --url http://127.0.0.1:8080 --pid PID [--seconds 30]
        [--readers 20] [--days 400] [--rate 200] [--json]

For --seconds, `--readers` clients each request, back to back, hourly /metrics over the
last --days days grouped by channel and event_name, while one paced sender posts single
events at --rate per second (open loop: a slow answer does not slow the sender down).
Reports ingest latency (p50/p99/max), the read answers by status, and the service's
peak RSS (the process --pid and its children, sampled every 200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import numpy as np
import psutil


def _rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


async def _sample_rss(pid: int, stop: asyncio.Event, peaks: list[float]) -> None:
    while not stop.is_set():
        peaks.append(_rss_mb(pid))
        await asyncio.sleep(0.2)


async def _ingest(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float, headers: dict[str, str]
) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        event = {"event_name": "storm_probe", "user_id": f"u{uuid.uuid4().hex[:6]}",
                 "idempotency_key": uuid.uuid4().hex}  # fmt: skip
        started = time.perf_counter()
        async with session.post(f"{url}/events", json=event, headers=headers) as response:
            await response.read()
            statuses[response.status] += 1
        latencies.append((time.perf_counter() - started) * 1000)

    begin = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        due = n / rate
        if due > elapsed:
            await asyncio.sleep(due - elapsed)
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    await asyncio.gather(*pending)
    return latencies, statuses


async def _reader(
    session: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    deadline: float,
    statuses: Counter[str],
    latencies: list[float],
    headers: dict[str, str],
) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            async with session.get(f"{url}/metrics", params=params, headers=headers) as response:
                body = await response.read()
                code = ""
                if response.status != 200:
                    code = json.loads(body).get("error", "") if body[:1] == b"{" else ""
                statuses[f"{response.status} {code}".strip()] += 1
                if response.status == 503:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses[type(exc).__name__] += 1
        latencies.append((time.perf_counter() - started) * 1000)


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    params = {
        "from": (end - timedelta(days=args.days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "granularity": "hour",
        "group_by": "channel,event_name",
    }
    if args.end:
        end = datetime.fromisoformat(args.end.replace("Z", "+00:00"))
        params["from"] = (end - timedelta(days=args.days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        params["to"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"Authorization": f"Bearer {args.read_key}"} if args.read_key else {}
    write_headers = {"Authorization": f"Bearer {args.write_key}"} if args.write_key else {}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    rss: list[float] = []
    stop = asyncio.Event()
    read_statuses: Counter[str] = Counter()
    read_latencies: list[float] = []
    baseline_rss = _rss_mb(args.pid)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        sampler = asyncio.create_task(_sample_rss(args.pid, stop, rss))
        # A quiet second first: ingest latency without the storm, for comparison.
        quiet, _ = await _ingest(session, args.url, args.rate, 5, write_headers)
        deadline = time.perf_counter() + args.seconds
        readers = [
            asyncio.create_task(
                _reader(session, args.url, params, deadline, read_statuses, read_latencies, headers)
            )
            for _ in range(args.readers)
        ]
        loud, ingest_statuses = await _ingest(
            session, args.url, args.rate, args.seconds, write_headers
        )
        await asyncio.gather(*readers)
        stop.set()
        await sampler

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1) if values else 0.0

    return {
        "window_days": args.days,
        "readers": args.readers,
        "rate": args.rate,
        "seconds": args.seconds,
        "quiet_ingest_ms": {"p50": pct(quiet, 50), "p99": pct(quiet, 99), "max": pct(quiet, 100)},
        "storm_ingest_ms": {"p50": pct(loud, 50), "p99": pct(loud, 99), "max": pct(loud, 100)},
        "ingest_statuses": dict(ingest_statuses),
        "read_statuses": dict(read_statuses),
        "read_ms": {"p50": pct(read_latencies, 50), "max": pct(read_latencies, 100)},
        "rss_mb": {"before": round(baseline_rss), "peak": round(max(rss or [0.0]))},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="the service's process id (for RSS)")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--days", type=int, default=400)
    p.add_argument("--end", help="end of the read window (RFC 3339; default: the next hour)")
    p.add_argument("--rate", type=float, default=200, help="single events per second")
    p.add_argument("--write-key", help="a write key, when the service needs one")
    p.add_argument("--read-key", help="a read key, when the service needs one")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = asyncio.run(storm(args))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
