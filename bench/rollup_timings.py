"""Time /metrics?plan=rollup for q1-q3 over several windows, without the SQL baseline.

    python -m bench.rollup_timings --url http://127.0.0.1:8080 [--runs 5] [--windows 1,7,30]

For data sets where a raw scan per cell would take minutes (100M rows): prints a markdown
table of median (p95) ms, the series size and the events counted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

from bench.queries import QUERIES


def time_query(
    url: str, params: dict[str, str], runs: int, read_key: str | None = None
) -> tuple[list[float], dict[str, object]]:
    """Run one query runs+1 times (the first warms caches); return timings and the answer."""
    timings: list[float] = []
    body: dict[str, object] = {}
    for attempt in range(runs + 1):
        started = time.perf_counter()
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(f"{url}/metrics?{query}")
        if read_key:
            request.add_header("Authorization", f"Bearer {read_key}")
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
            if response.headers["X-Metrics-Plan"] != "rollup":
                raise RuntimeError("the service did not answer from rollups")
        if attempt:
            timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings), body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--windows", default="1,7,30,90,180")
    parser.add_argument("--end", default="2026-11-01T00:00:00Z")
    parser.add_argument("--read-key", help="a read key of the project whose events are queried")
    args = parser.parse_args()
    end = datetime.fromisoformat(args.end).astimezone(UTC)
    print("| id | median (p95) ms | series rows | events |\n|---|---|---|---|")
    for query in QUERIES:
        for days in (int(w) for w in args.windows.split(",")):
            params = {
                **query.params,
                "from": (end - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "to": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "plan": "rollup",
            }
            timings, body = time_query(args.url, params, args.runs, args.read_key)
            p95 = timings[max(0, math.ceil(0.95 * len(timings)) - 1)]
            series = body["series"]
            total = body["total"]
            assert isinstance(series, list) and isinstance(total, dict)
            print(
                f"| {query.id}-{days}d | {statistics.median(timings):.1f} ({p95:.1f}) "
                f"| {len(series)} | {total['events']:,} |"
            )


if __name__ == "__main__":
    main()
