"""SDK batches against native ones, with wrk, in interleaved rounds: for each SDK, a batch of
N events as that SDK sends it (bench.sdk_shapes, from its recorded requests) and the same
N events as a POST /events batch, one after the other, round after round, against one
running service. Prints one JSON object: events/s per round and the ratio of medians.

    python -m bench.sdk_ab --url http://127.0.0.1:8080 --key emw_... \\
        [--sdk analytics-python ...] [--rounds 3] [-c 8] [-d 10] [--batch 100]

Each run gets bodies no earlier run sent (fresh message ids), so every event is new.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sdk_ab", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", required=True, help="a write key")
    p.add_argument("--sdk", action="append", choices=sorted(SHAPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("-c", "--connections", type=int, default=8)
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds per run")
    p.add_argument("--bodies", type=int, default=1500, help="distinct bodies per run")
    args = p.parse_args(argv)
    report: dict[str, Any] = {
        "command": f"wrk -t1 -c{args.connections} -d{args.duration}s -s {SCRIPT.name}, "
        f"batches of {args.batch}, {args.rounds} interleaved rounds",
        "sdks": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for sdk in args.sdk or sorted(SHAPES):
            runs: dict[str, list[dict[str, Any]]] = {"native": [], "sdk": []}
            for _ in range(args.rounds):
                for kind, name in (("native", f"native:{sdk}"), ("sdk", sdk)):
                    bodies = Path(folder) / kind
                    write_bodies(name, key=args.key, batch=args.batch, count=args.bodies,
                                 out=bodies)  # fmt: skip
                    result = wrk_run(args.url, bodies, connections=args.connections,
                                     duration_s=args.duration)  # fmt: skip
                    runs[kind].append(result)
            native = [r["events_per_s"] for r in runs["native"]]
            theirs = [r["events_per_s"] for r in runs["sdk"]]
            report["sdks"][sdk] = {
                "native_events_per_s": native,
                "sdk_events_per_s": theirs,
                "ratio_of_medians": round(statistics.median(theirs) / statistics.median(native), 3),
                "round_ratios": [round(s / n, 3) for s, n in zip(theirs, native, strict=True)],
                "sdk_p99_ms": [r["p99_ms"] for r in runs["sdk"]],
                "native_p99_ms": [r["p99_ms"] for r in runs["native"]],
                "errors": sum(r["errors"] for r in runs["sdk"] + runs["native"]),
            }
            print(json.dumps({sdk: report["sdks"][sdk]}), flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
