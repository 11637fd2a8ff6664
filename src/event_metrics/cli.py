"""Command line: `event-metrics serve | migrate | replicate | rebuild-rollups`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import asyncpg
import msgspec

from event_metrics import http_server, rollups, verify
from event_metrics.migrations import upgrade_head
from event_metrics.postgres import start_embedded
from event_metrics.replicator import Replicator
from event_metrics.settings import ConfigError, Settings

log = logging.getLogger("event_metrics")


def _resolve_database(settings: Settings) -> tuple[Settings, Any]:
    """With no database URL, start the embedded PostgreSQL and point the settings at it."""
    if settings.database_url:
        return settings, None
    url, server = start_embedded(settings.data_dir)
    return msgspec.structs.replace(settings, database_url=url), server


def serve(settings: Settings) -> None:
    """Apply migrations, then serve HTTP (and replicate, when ClickHouse is configured)."""
    settings, server = _resolve_database(settings)
    assert settings.database_url is not None
    asyncio.run(upgrade_head(settings.database_url))
    # uvicorn's worker processes read settings from the environment again.
    os.environ["EVENT_METRICS_DATABASE_URL"] = settings.database_url
    log.info("serving on http://%s:%d", settings.http.host, settings.http.port)
    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit
    # lets the finally below stop the embedded PostgreSQL instead of leaving it running.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        http_server.run(settings.http, shutdown_timeout_s=settings.writer.shutdown_timeout_s)
    finally:
        if server is not None:
            server.cleanup()


def _exit_on_signal(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def migrate(settings: Settings) -> None:
    """alembic upgrade head against the configured (or embedded) database."""
    settings, server = _resolve_database(settings)
    assert settings.database_url is not None
    asyncio.run(upgrade_head(settings.database_url))
    print("schema is at head")
    del server


def replicate(settings: Settings, *, once: bool = False) -> None:
    """Run the PostgreSQL -> ClickHouse replicator on its own (or one catch-up pass)."""
    clickhouse_url = settings.clickhouse_url
    if not clickhouse_url:
        sys.exit("event-metrics: replicate needs EVENT_METRICS_CLICKHOUSE_URL")
    settings, server = _resolve_database(settings)
    assert settings.database_url is not None
    replicator = Replicator(settings.database_url, clickhouse_url, settings.replication)

    async def run() -> None:
        await upgrade_head(settings.database_url or "")
        if once:
            print(f"copied {await replicator.run_once()} rows")
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, replicator.stop)
        await replicator.run()

    asyncio.run(run())
    del server


def rebuild_rollups(settings: Settings) -> None:
    """Recompute the rollups from the events table (after a restore, or to verify them)."""
    settings, server = _resolve_database(settings)

    async def run() -> int:
        await upgrade_head(settings.database_url or "")
        connection = await asyncpg.connect(settings.database_url)
        try:
            return await rollups.rebuild(connection)
        finally:
            await connection.close()

    print(f"rolled up {asyncio.run(run())} events")
    del server


def verify_mirror(settings: Settings, *, fix: bool, as_json: bool) -> None:
    """Compare ClickHouse with PostgreSQL per UTC day and event name; exit 1 on differences."""
    if not settings.clickhouse_url:
        sys.exit("event-metrics: verify needs EVENT_METRICS_CLICKHOUSE_URL")
    settings, server = _resolve_database(settings)
    assert settings.database_url is not None and settings.clickhouse_url is not None
    report, after = asyncio.run(verify.run(settings.database_url, settings.clickhouse_url, fix=fix))
    final = after or report
    if as_json:
        print(json.dumps({
            "cells": report.cells,
            "differences": [d.as_dict() for d in report.differences],
            "repaired_rows": after.repaired if after else 0,
            "differences_after_repair": [d.as_dict() for d in after.differences] if after else None,
        }))  # fmt: skip
    else:
        print(f"compared {report.cells} (day, event_name) cells: "
              f"{len(report.differences)} differ")  # fmt: skip
        for d in report.differences:
            print(f"  {d.day} {d.event_name!r}: postgres {d.postgres_rows} rows, "
                  f"clickhouse {d.clickhouse_rows}; missing {len(d.missing)}, "
                  f"extra {len(d.extra)}")  # fmt: skip
        if after is not None:
            print(f"repaired: copied {after.repaired} rows again; "
                  f"{len(after.differences)} cells still differ")  # fmt: skip
    del server
    if final.differences:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="event-metrics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply migrations and serve HTTP on HOST:PORT")
    commands.add_parser("migrate", help="alembic upgrade head")
    replicate_parser = commands.add_parser("replicate", help="copy events into ClickHouse")
    replicate_parser.add_argument(
        "--once", action="store_true", help="copy what is committed now, then exit"
    )
    commands.add_parser("rebuild-rollups", help="recompute the rollups from the events table")
    verify_parser = commands.add_parser(
        "verify", help="compare the ClickHouse mirror with PostgreSQL; exit 1 on differences"
    )
    verify_parser.add_argument(
        "--repair", action="store_true", help="copy the differing days again, then re-check"
    )
    verify_parser.add_argument("--json", action="store_true", help="print a JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"event-metrics: invalid configuration: {exc}")
    if args.command == "serve":
        serve(settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "rebuild-rollups":
        rebuild_rollups(settings)
    elif args.command == "verify":
        verify_mirror(settings, fix=args.repair, as_json=args.json)
    else:
        replicate(settings, once=args.once)


if __name__ == "__main__":
    main()
