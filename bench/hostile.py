"""Hostile gzip bodies against everyone else: while attackers send gzip bodies back to
back, how long do /health and a single POST /events take? (issue #22, item 1)

    python -m bench.hostile --variant now --variant before@/tmp/old-checkout/src \\
        [--seconds 10] [--attackers 2] [--mb 2] [--rounds 1] [--scenario NAME ...]

A variant is NAME[:VAR=VALUE,...][@PYTHONPATH], as in bench.ab: each runs `serve` on a
fresh database of its own. For each scenario, a prober sends GET /health and a single
POST /events, each 20 times a second on a fixed schedule (open loop: a slow answer does
not slow the probing), for --seconds, while --attackers clients send the scenario's body
back to back. Scenarios:

- idle: no attacker, the baseline.
- members-no-key: --mb MB of empty gzip members, bare (as posthog-js gzips), on /batch/,
  no key anywhere (the key would be in the body).
- members-key: the same with Content-Encoding: gzip on /events, with a write key.
- bomb-key: /events, Content-Encoding: gzip, 20 MB of spaces in 20 KB (inflates past the
  5 MB limit).
- legit-5mb: /events, Content-Encoding: gzip, a valid batch of 9,000 events, 4.6 MB
  inflated (86 KB on the wire; the same keys each time, so duplicates after the first).
- legit-5mb-plain: the same batch without gzip: what parsing and storing it costs, for
  comparison.

Prints a markdown table: probe latency p50/p99/max per scenario, and the attack requests'
statuses and durations. Between scenarios it waits until /health answers quickly again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import numpy as np

from bench.ab import Variant

PROBE_RATE = 20  # per second, each of /health and POST /events
SCENARIOS = ("idle", "members-no-key", "members-key", "bomb-key", "legit-5mb", "legit-5mb-plain")


def attack_request(scenario: str, key: str, mb: float) -> dict[str, Any]:
    members = gzip.compress(b"") * int(mb * 1_000_000 / 20)
    bearer = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if scenario == "members-no-key":
        return {"path": "/batch/", "data": members, "headers": {"Content-Type": "text/plain"}}
    if scenario == "members-key":
        return {"path": "/events", "data": members,
                "headers": {**bearer, "Content-Encoding": "gzip"}}  # fmt: skip
    if scenario == "bomb-key":
        return {"path": "/events", "data": gzip.compress(b" " * (20 << 20)),
                "headers": {**bearer, "Content-Encoding": "gzip"}}  # fmt: skip
    if scenario.startswith("legit-5mb"):
        padding = "p" * 420
        events = [
            {"event_name": "legit", "user_id": f"u{n % 500}", "idempotency_key": f"legit-{n}",
             "properties": {"n": n, "pad": padding}}
            for n in range(9_000)
        ]  # fmt: skip
        text = json.dumps(events).encode()
        if scenario.endswith("-plain"):
            return {"path": "/events", "data": text, "headers": bearer}
        return {"path": "/events", "data": gzip.compress(text),
                "headers": {**bearer, "Content-Encoding": "gzip"}}  # fmt: skip
    raise ValueError(scenario)


async def _attack(
    session: aiohttp.ClientSession, url: str, request: dict[str, Any], stop: asyncio.Event,
    seen: list[tuple[int, float]],
) -> None:  # fmt: skip
    while not stop.is_set():
        started = time.perf_counter()
        try:
            async with session.post(url + request["path"], data=request["data"],
                                    headers=request["headers"]) as response:  # fmt: skip
                await response.read()
                seen.append((response.status, time.perf_counter() - started))
        except (aiohttp.ClientError, TimeoutError):
            seen.append((0, time.perf_counter() - started))


async def _probe(
    session: aiohttp.ClientSession, url: str, key: str, seconds: float
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"/health": [], "/events": []}
    failures: Counter[str] = Counter()
    pending: set[asyncio.Task[None]] = set()
    headers = {"Authorization": f"Bearer {key}"}

    async def one(path: str) -> None:
        started = time.perf_counter()
        if path == "/health":
            request = session.get(url + path)
        else:
            event = {"event_name": "probe", "user_id": "p", "idempotency_key": uuid.uuid4().hex}
            request = session.post(url + path, json=event, headers=headers)
        try:
            async with request as response:
                await response.read()
                if response.status != 200:
                    failures[f"{path} {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures[f"{path} {type(exc).__name__}"] += 1  # counted at the time it took
        latencies[path].append((time.perf_counter() - started) * 1000)

    begin = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        due = n / PROBE_RATE
        if due > elapsed:
            await asyncio.sleep(due - elapsed)
        for path in latencies:
            task = asyncio.create_task(one(path))
            pending.add(task)
            task.add_done_callback(pending.discard)
        n += 1
    await asyncio.gather(*pending)
    if failures:
        print(f"probe failures: {dict(failures)}", file=sys.stderr)
    return latencies


async def _quiet(url: str, timeout_s: float = 180) -> None:
    """Wait until /health answers in under 50 ms three times in a row (the server has
    finished whatever the last scenario left it doing)."""
    deadline = time.monotonic() + timeout_s
    quick = 0
    async with aiohttp.ClientSession() as session:
        while quick < 3 and time.monotonic() < deadline:
            started = time.perf_counter()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(5)) as r:
                    await r.read()
            quick = quick + 1 if time.perf_counter() - started < 0.05 else 0
            await asyncio.sleep(0.2)


async def scenario_run(variant: Variant, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    assert variant.key is not None
    await _quiet(variant.url)
    stop = asyncio.Event()
    seen: list[tuple[int, float]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as attackers,
        aiohttp.ClientSession(timeout=timeout) as prober,
    ):
        attacks = []
        if scenario != "idle":
            request = attack_request(scenario, variant.key, args.mb)
            attacks = [
                asyncio.create_task(_attack(attackers, variant.url, request, stop, seen))
                for _ in range(args.attackers)
            ]
            await asyncio.sleep(0.5)  # the first bodies are on their way
        latencies = await _probe(prober, variant.url, variant.key, args.seconds)
        stop.set()
        # An attack still running after the probing (one that takes many seconds) is
        # left to finish, so that its duration is known.
        await asyncio.gather(*attacks)
    result: dict[str, Any] = {"variant": variant.name, "scenario": scenario}
    for path, values in latencies.items():
        result[path] = {
            "p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": max(values), "n": len(values),
        }  # fmt: skip
    if seen:
        result["attacks"] = {
            "n": len(seen),
            "statuses": dict(Counter(status for status, _ in seen)),
            "median_s": statistics.median(s for _, s in seen),
            "max_s": max(s for _, s in seen),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.hostile", description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", default=[],
                   help="NAME[:VAR=VALUE,...][@PYTHONPATH]")  # fmt: skip
    p.add_argument("--scenario", action="append", choices=SCENARIOS)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--mb", type=float, default=2, help="size of the empty-member bodies")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="HTTP worker processes of each")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    p.add_argument("--first-port", type=int, default=8450)
    args = p.parse_args(argv)
    args.clickhouse_url = None  # what bench.ab's Variant reads
    variants = [Variant(spec, args, args.first_port + n)
                for n, spec in enumerate(args.variant or ["now"])]  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        for variant in variants:
            variant.start()
        for round_ in range(args.rounds):
            for scenario in args.scenario or SCENARIOS:
                order = variants if round_ % 2 == 0 else variants[::-1]
                for variant in order:
                    result = asyncio.run(scenario_run(variant, scenario, args))
                    print(json.dumps(result), file=sys.stderr)
                    results.append(result)
    finally:
        for variant in variants:
            variant.stop()
    print("| variant | scenario | /health p50 / p99 / max ms | POST /events p50 / p99 / max ms "
          "| attack requests: statuses, median / max s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in results:
        cells = [
            f"{r[path]['p50']:.1f} / {r[path]['p99']:.1f} / {r[path]['max']:.0f}"
            for path in ("/health", "/events")
        ]
        attacks = r.get("attacks")
        attack = (
            f"{attacks['n']}: {attacks['statuses']}, {attacks['median_s']:.2f} / "
            f"{attacks['max_s']:.2f}" if attacks else "-"
        )  # fmt: skip
        print(f"| {r['variant']} | {r['scenario']} | {cells[0]} | {cells[1]} | {attack} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
