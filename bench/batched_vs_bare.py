"""Batched ingest through the service against bare asyncpg on the same table, in ABBA
rounds (service, bare, bare, service), each round's ratio from its two pairs.

    python -m bench.batched_vs_bare --url http://127.0.0.1:8080 --key emw_... \\
        --database-url postgresql://postgres@127.0.0.1/db [--rounds 5] [--batch 1000]

The service gets its events from wrk (bench/wrk/batch_events.lua: 8 connections, each
request `batch` events with their own keys), so the load costs the two cores almost
nothing, as bare asyncpg's prebuilt rows cost nothing (bench.load builds and encodes
its JSON in Python, on the same cores). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

from bench import bare_asyncpg, wrk


def measure_round(args: argparse.Namespace) -> dict[str, Any]:
    def service() -> float:
        result = wrk.run(args.url, key=args.key, connections=args.connections,
                         duration_s=args.duration, batch=args.batch)  # fmt: skip
        if result["errors"]:
            raise RuntimeError(f"the service answered {result['errors']} requests with errors")
        return float(result["events_per_s"])

    def bare() -> float:
        return asyncio.run(
            bare_asyncpg.measure(
                args.database_url,
                total=args.bare_total,
                batch=args.batch,
                concurrency=args.connections,
                path="copy",
            )
        )

    first, second, third, fourth = service(), bare(), bare(), service()
    return {
        "service": [round(first), round(fourth)],
        "bare": [round(second), round(third)],
        "ratio": round((first + fourth) / (second + third), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.batched_vs_bare", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", required=True, help="a write key of a project in that database")
    p.add_argument("--database-url", required=True, help="the service's own database")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("-c", "--connections", type=int, default=8, help="for both sides")
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds of each wrk run")
    p.add_argument("--bare-total", type=int, default=400_000, help="rows of each bare run")
    args = p.parse_args(argv)
    rounds = [measure_round(args) for _ in range(args.rounds)]
    print(json.dumps({
        "rounds": rounds,
        "service_median": statistics.median(x for r in rounds for x in r["service"]),
        "bare_median": statistics.median(x for r in rounds for x in r["bare"]),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "ratio_min": min(r["ratio"] for r in rounds),
        "ratio_max": max(r["ratio"] for r in rounds),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
