"""wrk, an independent load generator written in C, against a service: single events, one
per request, each with its own idempotency key (bench/wrk/single_event.lua), or with
--batch N, N events per request (bench/wrk/batch_events.lua).

    python -m bench.wrk --url http://127.0.0.1:8080 --key emw_... [-c 64] [-d 10] [--pid N]
    python -m bench.wrk --url http://127.0.0.1:8080 --key emw_... --batch 1000 -c 8

A Python load tool cannot measure a ceiling above its own (bench.load tops out near the
no-op app's speed); wrk can. Prints one JSON object: requests/s, latency percentiles,
non-2xx answers, and with --pid the peak RSS of that process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil

SCRIPT = Path(__file__).parent / "wrk" / "single_event.lua"
BATCH_SCRIPT = Path(__file__).parent / "wrk" / "batch_events.lua"


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(
            "wrk is not installed (Debian: apt-get install wrk; `make bench` does it)"
        )
    return path


class PeakRss:
    """The largest resident set of each process in a tree, sampled every 0.2 s."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        assert self.pid is not None
        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in tree:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                self.peak[process.pid] = max(self.peak.get(process.pid, 0), rss)

    def max_mib(self) -> float | None:
        return round(max(self.peak.values()) / 2**20, 1) if self.peak else None


def run(
    url: str, *, key: str | None, connections: int = 64, duration_s: int = 10,
    threads: int = 2, pid: int | None = None, batch: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One wrk run; the Lua script's summary line, plus the peak RSS when pid is given.
    With `batch`, each request carries that many events (the line adds events_per_s)."""
    env = {**os.environ, "WRK_PATH": "/events"}
    script = SCRIPT
    if batch is not None:
        env["WRK_BATCH"] = str(batch)
        script = BATCH_SCRIPT
    if key:
        env["WRK_AUTH"] = f"Bearer {key}"
    argv = [find_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", str(script),
            url.rstrip("/")]  # fmt: skip
    with PeakRss(pid) as rss:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("JSON "))
    result["peak_rss_mib"] = rss.max_mib()
    result["command"] = " ".join(argv[1:])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.wrk", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", default=os.environ.get("WRITE_KEY"), help="write key ($WRITE_KEY)")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--pid", type=int, help="the service's process: report its peak RSS")
    p.add_argument("--batch", type=int, help="events per request (default: single events)")
    args = p.parse_args(argv)
    result = run(args.url, key=args.key, connections=args.connections, duration_s=args.duration,
                 threads=args.threads, pid=args.pid, batch=args.batch)  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
