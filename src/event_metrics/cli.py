"""The `event-metrics` command: serve, maintain the databases, manage projects and keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec

from event_metrics import (
    __version__,
    http_server,
    lifecycle_cli,
    logs,
    projects,
    rollups,
    telemetry,
    verify,
)
from event_metrics.clickhouse_cluster import ClusterError
from event_metrics.embedded import EmbeddedUnavailable, start_embedded
from event_metrics.migrations import upgrade_head
from event_metrics.replicator import Replicator
from event_metrics.replicator_process import die_with_parent, replicator_process, report_status
from event_metrics.settings import ConfigError, Settings, unknown_variables, variables

log = logging.getLogger("event_metrics")
T = TypeVar("T")

DESCRIPTION = """\
Product-analytics events in over HTTP, counts and exact unique users out.

Every command reads its configuration from EVENT_METRICS_* environment variables (the
README lists them all). Without EVENT_METRICS_DATABASE_URL, commands start an embedded
PostgreSQL (the `embedded` extra) whose data lives under EVENT_METRICS_DATA_DIR (default .data).
"""
DEFAULT_KEYS_FILE = "default-project.env"


class Failure(Exception):
    """A command cannot do what was asked; the message says why (exit status 1)."""


# --- databases ---------------------------------------------------------------------------


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """The settings with a database URL: the configured one, or the embedded PostgreSQL's
    (started here and stopped on the way out), migrated to head."""
    server = None
    if not settings.database_url:
        try:
            url, server = start_embedded(
                settings.data_dir, relocate_to=settings.embedded_postgres_dir
            )
        except EmbeddedUnavailable as exc:
            raise Failure(str(exc)) from None
        settings = msgspec.structs.replace(settings, database_url=url)
    try:
        assert settings.database_url is not None
        asyncio.run(upgrade_head(settings.database_url))
        yield settings
    finally:
        if server is not None:
            server.cleanup()


def with_connection(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        connection = await asyncpg.connect(settings.database_url)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


# --- serve -------------------------------------------------------------------------------


def serve(settings: Settings, _: argparse.Namespace) -> None:
    check_port_free(settings.http.host, settings.http.port)
    # From the start, so that a stop while PostgreSQL starts or migrations run stops
    # PostgreSQL too. uvicorn re-raises SIGTERM after its graceful shutdown: exit cleanly
    # then, so the embedded PostgreSQL is stopped and `make serve` reports no error. A
    # hang-up (the terminal closing) stops everything the same way.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    http_server.stop_on_hang_up()
    embedded = not settings.database_url
    with database(settings) as settings:
        assert settings.database_url is not None
        if embedded:
            show_first_default_keys(settings)
        # uvicorn's worker processes read settings from the environment again.
        os.environ["EVENT_METRICS_DATABASE_URL"] = settings.database_url
        log.info("serving on http://%s:%d", settings.http.host, settings.http.port)
        alongside = None
        replication = settings.replication
        if settings.clickhouse_url and replication.enabled and replication.process:
            alongside = functools.partial(
                replicator_process, restart_max_s=replication.process_restart_max_s
            )
        with contextlib.suppress(KeyboardInterrupt):
            http_server.run(
                settings.http,
                shutdown_timeout_s=settings.writer.shutdown_timeout_s,
                alongside=alongside,
            )
        log.info("stopped")


def _exit_cleanly(signum: int, _: object) -> None:
    raise SystemExit(0)


def check_port_free(host: str, port: int) -> None:
    """Fail before starting anything when the port is taken, naming the way out."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Failure(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process uses it. "
                f"Stop it, or pick another port, e.g. EVENT_METRICS_PORT={port + 1}"
            ) from None


def show_first_default_keys(settings: Settings) -> None:
    """On a new embedded database, give the project 'default' its first two keys: shown
    once on the terminal and kept in a file only the owner can read."""
    created = with_connection(settings, projects.first_default_keys)
    if created is None:
        return
    write, read = created
    path = Path(settings.data_dir) / DEFAULT_KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(
            "# event-metrics: the keys of project 'default'. Keep this file private.\n"
            f"WRITE_KEY={write.key}\nREAD_KEY={read.key}\n"
        )
    # Printed, not logged: log lines go to collectors, and keys never go in a log.
    print(
        "\nProject 'default' was created with two keys (shown once; also in "
        f"{path}):\n  write key (POST /events):  {write.key}\n"
        f"  read key  (GET /metrics):  {read.key}\n",
        file=sys.stderr,
        flush=True,
    )


# --- maintenance -------------------------------------------------------------------------


def migrate(settings: Settings, _: argparse.Namespace) -> None:
    with database(settings):
        print("schema is at head")


def replicate(settings: Settings, args: argparse.Namespace) -> None:
    clickhouse_url = settings.clickhouse_url
    if not clickhouse_url:
        raise Failure("replicate needs EVENT_METRICS_CLICKHOUSE_URL")
    with database(settings) as settings:
        assert settings.database_url is not None
        replicator = Replicator(
            settings.database_url, clickhouse_url, settings.replication, lag=settings.lag,
            cluster=settings.clickhouse_cluster,
        )  # fmt: skip

        async def run() -> None:
            if args.once:
                print(f"copied {await replicator.run_once()} rows")
                return
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, replicator.stop_soon)
            if args.parent_pid:  # a child of serve
                die_with_parent(args.parent_pid)
                # The hang-up of serve's terminal reaches this process too: serve stops
                # it (SIGTERM) once the HTTP workers have stopped.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            else:
                loop.add_signal_handler(signal.SIGHUP, replicator.stop_soon)
            reporting = None
            if args.status_file:
                reporting = asyncio.create_task(report_status(replicator, args.status_file))
            try:
                await replicator.run()
            finally:
                if reporting is not None:
                    reporting.cancel()

        asyncio.run(run())
        telemetry.process_exited()


def rebuild_rollups(settings: Settings, _: argparse.Namespace) -> None:
    with database(settings) as settings:
        print(f"rolled up {with_connection(settings, rollups.rebuild)} events")


def verify_mirror(settings: Settings, args: argparse.Namespace) -> None:
    clickhouse_url = settings.clickhouse_url
    if not clickhouse_url:
        raise Failure("verify needs EVENT_METRICS_CLICKHOUSE_URL")
    with database(settings) as settings:
        assert settings.database_url is not None
        try:
            report, after = asyncio.run(
                verify.run(
                    settings.database_url,
                    clickhouse_url,
                    fix=args.repair,
                    cluster=settings.clickhouse_cluster,
                )
            )
        except ClusterError as exc:
            raise Failure(str(exc)) from None
    if args.json:
        print(json.dumps({
            "cells": report.cells,
            "differences": [d.as_dict() for d in report.differences],
            "repaired_rows": after.repaired if after else 0,
            "differences_after_repair": [d.as_dict() for d in after.differences] if after else None,
        }))  # fmt: skip
    else:
        print(f"compared {report.cells} (project, day, event_name) cells: "
              f"{len(report.differences)} differ")  # fmt: skip
        for d in report.differences:
            print(f"  project {d.project_id} {d.day} {d.event_name!r}: "
                  f"postgres {d.postgres_rows} rows, clickhouse {d.clickhouse_rows}; "
                  f"missing {len(d.missing)}, extra {len(d.extra)}, "
                  f"changed {len(d.changed)}")  # fmt: skip
        if after is not None:
            print(f"repaired: copied {after.repaired} rows again; "
                  f"{len(after.differences)} cells still differ")  # fmt: skip
    if (after or report).differences:
        raise SystemExit(1)


# --- projects and keys -------------------------------------------------------------------


def _admin(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    with database(settings) as settings:
        try:
            return with_connection(settings, work)
        except (projects.ProjectExists, projects.NotFound, ValueError) as exc:
            raise Failure(str(exc)) from None


def projects_create(settings: Settings, args: argparse.Namespace) -> None:
    write, read = _admin(settings, lambda c: projects.create_project(c, args.name))
    if args.json:
        print(json.dumps({"project": args.name, "write_key": write.key, "read_key": read.key}))
        return
    print(f"project {args.name!r} created. Its keys are shown only now; store them:")
    print(f"  write key (POST /events):  {write.key}")
    print(f"  read key  (GET /metrics):  {read.key}")


def projects_list(settings: Settings, args: argparse.Namespace) -> None:
    found = _admin(settings, projects.list_projects)
    if args.json:
        print(json.dumps(found))
        return
    print(f"{'project':<24} {'id':>5} {'write keys':>10} {'read keys':>9}  created")
    for p in found:
        print(f"{p['name']:<24} {p['id']:>5} {p['write_keys']:>10} {p['read_keys']:>9}  "
              f"{p['created_at']}")  # fmt: skip


def keys_create(settings: Settings, args: argparse.Namespace) -> None:
    new = _admin(settings, lambda c: projects.create_key(c, args.project, args.scope))
    if args.json:
        print(json.dumps({"project": args.project, "scope": args.scope, "key": new.key,
                          "prefix": new.prefix}))  # fmt: skip
        return
    print(f"{args.scope} key for project {args.project!r} (shown only now): {new.key}")


def keys_list(settings: Settings, args: argparse.Namespace) -> None:
    found = _admin(settings, lambda c: projects.list_keys(c, args.project))
    if args.json:
        print(json.dumps(found))
        return
    print(f"{'prefix':<14} {'project':<24} {'scope':<6} {'created':<33} revoked")
    for k in found:
        print(f"{k['prefix']:<14} {k['project']:<24} {k['scope']:<6} {k['created_at']:<33} "
              f"{k['revoked_at'] or '-'}")  # fmt: skip


def keys_revoke(settings: Settings, args: argparse.Namespace) -> None:
    _admin(settings, lambda c: projects.revoke_key(c, args.prefix))
    print(f"revoked {args.prefix}: refused by every running process within "
          f"{settings.access.key_refresh_s:g} s")  # fmt: skip


# --- the parser --------------------------------------------------------------------------


def _variables_help(*groups: str | None) -> str:
    """An epilog naming the variables a command reads (None: the top-level ones)."""
    names = [v.name for v in variables() if v.group in groups]
    return "reads " + ", ".join(names) + "\n(the README's configuration table explains each)"


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="event-metrics", description=DESCRIPTION, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"event-metrics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[..., None],
        summary: str,
        groups: tuple[str | None, ...],
        parent: Any = commands,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_variables_help(*groups),
            formatter_class=raw,
        )
        sub.set_defaults(run=run)
        return sub

    groups = (
        "http", "access", "ingest", "writer", "metrics", "rollups", "replication", "lag",
        "telemetry",
    )  # fmt: skip
    everything = (None, *groups)
    command(
        "serve",
        serve,
        "apply the migrations, then serve HTTP on HOST:PORT (with the "
        "writers, rollups, and replication when ClickHouse is configured)",
        everything,
    )
    command("migrate", migrate, "apply the PostgreSQL migrations (alembic upgrade head)", (None,))
    sub = command(
        "replicate",
        replicate,
        "copy committed events into ClickHouse until stopped",
        (None, "replication", "lag"),
    )
    sub.add_argument("--once", action="store_true", help="copy what is committed now, then exit")
    sub.add_argument(
        "--status-file",
        type=Path,
        help="write the replicator's status here every second (serve reads it for /health)",
    )
    sub.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by serve
    command(
        "rebuild-rollups", rebuild_rollups, "recompute the rollups from the events table", (None,)
    )
    sub = command(
        "verify",
        verify_mirror,
        "compare ClickHouse with PostgreSQL per project, "
        "UTC day and event name; exit 1 on any difference",
        (None,),
    )
    sub.add_argument(
        "--repair",
        action="store_true",
        help="copy the differing days again and delete extra rows, then re-check",
    )
    sub.add_argument("--json", action="store_true", help="print a JSON report")
    lifecycle_cli.add_commands(commands, command, database)

    project_parser = commands.add_parser(
        "projects", help="create and list projects", description="Projects keep their events apart."
    )
    project_commands = project_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = command(
        "create",
        projects_create,
        "create a project with one write and one read key (their secrets are shown once)",
        (None,),
        project_commands,
    )
    sub.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'")
    sub.add_argument(
        "--json", action="store_true", help='print {"project", "write_key", "read_key"}'
    )
    sub = command(
        "list", projects_list, "list projects and their active keys", (None,), project_commands
    )
    sub.add_argument("--json", action="store_true", help="print JSON")

    key_parser = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Write keys send events; read keys read metrics.",
    )
    key_commands = key_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = command(
        "create", keys_create, "create a key (its secret is shown once)", (None,), key_commands
    )
    sub.add_argument("--project", required=True)
    sub.add_argument("--scope", required=True, choices=("write", "read"))
    sub.add_argument(
        "--json", action="store_true", help='print {"project", "scope", "key", "prefix"}'
    )
    sub = command(
        "list", keys_list, "list keys by prefix (secrets are never stored)", (None,), key_commands
    )
    sub.add_argument("--project", help="only this project's keys")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = command(
        "revoke",
        keys_revoke,
        "revoke a key; every process refuses it within KEY_REFRESH_MS",
        (None, "access"),
        key_commands,
    )
    sub.add_argument("prefix", help="the key's prefix, as `keys list` shows it")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"event-metrics: invalid configuration: {exc}")
    logs.configure(
        json_lines=settings.log_format == "json",
        level=settings.log_level,
        access_log=settings.access_log,
    )
    for name, close in unknown_variables(os.environ):
        hint = f"; did you mean {close}?" if close else ""
        log.warning("%s is not a setting and is ignored%s", name, hint)
    try:
        args.run(settings, args)
    except Failure as exc:
        sys.exit(f"event-metrics: {exc}")
    except lifecycle_cli.CommandError as exc:  # export, import: 2 for a refused request
        print(f"event-metrics: {exc}", file=sys.stderr)
        sys.exit(exc.status)


if __name__ == "__main__":
    main()
