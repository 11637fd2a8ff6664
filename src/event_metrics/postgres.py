"""PostgreSQL connections (the embedded server, used when no database URL is given, is
in embedded.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

# Errors that mean "PostgreSQL is not there right now", worth a retry; shared by the
# writers, the followers of the events table, and /metrics (which answers 503 for them).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    # What asyncpg raises when a connection the server terminated is used again; the
    # pool discards that connection on release, so a retry gets a fresh one.
    asyncpg.InternalClientError,
)


async def _init_codecs(connection: asyncpg.Connection) -> None:
    # jsonb as text in and out: properties are already JSON-encoded by the validator.
    await connection.set_type_codec("jsonb", encoder=str, decoder=str, schema="pg_catalog")


async def create_pool(
    url: str,
    *,
    size: int,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    command_timeout_s: float | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool of `size` connections; `init` runs once on each new connection."""

    async def setup(connection: asyncpg.Connection) -> None:
        await _init_codecs(connection)
        if init is not None:
            await init(connection)

    pool: asyncpg.Pool = await asyncpg.create_pool(
        url, min_size=1, max_size=size, init=setup, command_timeout=command_timeout_s
    )
    return pool
