"""Command line: `event-metrics serve | migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import msgspec
import uvicorn

from event_metrics.migrations import upgrade_head
from event_metrics.postgres import start_embedded
from event_metrics.settings import ConfigError, Settings

log = logging.getLogger("event_metrics")


def _resolve_database(settings: Settings) -> tuple[Settings, object | None]:
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
    log.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        "event_metrics.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.http_workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=settings.shutdown_timeout_ms // 1000 + 5,
    )
    del server  # keeps the embedded PostgreSQL alive until here


def migrate(settings: Settings) -> None:
    """alembic upgrade head against the configured (or embedded) database."""
    settings, server = _resolve_database(settings)
    assert settings.database_url is not None
    asyncio.run(upgrade_head(settings.database_url))
    print("schema is at head")
    del server


COMMANDS = {"serve": serve, "migrate": migrate}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="event-metrics", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"event-metrics: invalid configuration: {exc}")
    COMMANDS[args.command](settings)


if __name__ == "__main__":
    main()
