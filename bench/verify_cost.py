"""How long `event-metrics verify` takes on a seeded data set, this version against an older
one, in interleaved rounds (before, after, before, after, ...), in one process.

    git show 146f302:src/event_metrics/verify.py > /tmp/verify_before.py
    python -m bench.verify_cost --database-url postgresql://... \\
        --clickhouse-url clickhouse://... --before /tmp/verify_before.py --rounds 2

Prints one JSON line per run: round, code, seconds, cells, differences.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from event_metrics import verify


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--clickhouse-url", required=True)
    parser.add_argument("--before", type=Path, help="an older verify.py to time against")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    versions: list[tuple[str, ModuleType]] = [("after", verify)]
    if args.before:
        versions.insert(0, ("before", load(args.before)))
    for round_ in range(args.rounds):
        for name, module in versions:
            started = time.monotonic()
            report, _ = asyncio.run(module.run(args.database_url, args.clickhouse_url, fix=False))
            print(json.dumps({
                "round": round_, "code": name, "seconds": round(time.monotonic() - started, 1),
                "cells": report.cells, "differences": len(report.differences),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
