"""Alembic environment: the URL comes from Settings, and a lock makes concurrent upgrades safe."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from event_metrics.migrations import MIGRATION_LOCK_ID, sqlalchemy_url
from event_metrics.settings import Settings

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url") or Settings.from_env().database_url
    if not url:
        raise SystemExit("EVENT_METRICS_DATABASE_URL is not set")
    return sqlalchemy_url(url)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        # Two service processes starting at once: the second waits here, then finds
        # the schema already at head and does nothing.
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})"))
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
