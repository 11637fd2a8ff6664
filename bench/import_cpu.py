"""CPU per imported event, whatever the machine's load: the running `event-metrics import`
process and its own PostgreSQL backends (found by their client ports), over a while.

    python -m bench.import_cpu DATABASE_NAME [SECONDS]

On a shared machine the wall-clock rate says how busy the neighbours were; CPU seconds
per event say what an import costs, and two idle cores' worth of it is the rate this
host would give alone.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import psutil


def importer() -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "import" in line and any(part.endswith("event-metrics") for part in line):
            return process
    raise SystemExit("no event-metrics import is running")


async def backends(database: str, ports: set[int]) -> tuple[list[psutil.Process], int]:
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1/{database}")
    try:
        rows = await connection.fetch(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1", database
        )
        count: int = await connection.fetchval("SELECT count(*) FROM events")
    finally:
        await connection.close()
    return [psutil.Process(pid) for pid, port in rows if port in ports], count


def cpu(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def main() -> None:
    database, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    process = importer()
    ports = {
        c.laddr.port for c in process.net_connections("tcp") if c.raddr and c.raddr.port == 5432
    }
    pg, before = asyncio.run(backends(database, ports))
    own0, pg0, t0 = cpu([process]), cpu(pg), time.monotonic()
    time.sleep(seconds)
    _, after = asyncio.run(backends(database, ports))
    own1, pg1, t1 = cpu([process]), cpu(pg), time.monotonic()
    events = after - before
    own, server = (own1 - own0) / events * 1e6, (pg1 - pg0) / events * 1e6
    print(
        f"{events} events in {t1 - t0:.1f} s ({events / (t1 - t0):,.0f}/s); CPU per event: "
        f"importer {own:.1f} us, its {len(pg)} PostgreSQL backends {server:.1f} us, "
        f"total {own + server:.1f} us: {2e6 / (own + server):,.0f} events/s on two idle cores"
    )


if __name__ == "__main__":
    main()
