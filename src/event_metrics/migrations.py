"""PostgreSQL schema: run `alembic upgrade head` from code, safely from several processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

# Taken with pg_advisory_xact_lock in alembic/env.py; any constant unique to this app.
MIGRATION_LOCK_ID = 0x45564D4D  # "EVMM"


def sqlalchemy_url(url: str) -> str:
    """Turn a libpq-style URL into one SQLAlchemy drives through asyncpg."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ValueError("EVENT_METRICS_DATABASE_URL must start with postgresql://")
    return f"postgresql+asyncpg://{rest}"


def find_alembic_ini() -> Path:
    """alembic.ini in the working directory (the container), else beside the source tree."""
    candidates = [Path.cwd() / "alembic.ini", Path(__file__).resolve().parents[2] / "alembic.ini"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("alembic.ini not found in the working directory or the source tree")


def _upgrade(database_url: str, revision: str) -> None:
    # Imported here: alembic brings SQLAlchemy, about a second of imports that every
    # command (and every test process) would pay, though only a migration needs them.
    from alembic import command
    from alembic.config import Config

    config = Config(str(find_alembic_ini()))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


async def upgrade_head(database_url: str, revision: str = "head") -> None:
    """Apply every pending migration, up to `revision` (env.py runs its own event loop,
    so use a thread)."""
    await asyncio.to_thread(_upgrade, database_url, revision)
