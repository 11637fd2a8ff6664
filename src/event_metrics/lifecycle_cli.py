"""`event-metrics export` and `event-metrics import`: a project's events to a file and
back (docs/lifecycle.md).

Exit status: 0 when everything was done; 1 when some lines were refused (every good
line is stored, or nothing with --all-or-nothing) or the work failed; 2 when the command
asks for what cannot be (an unknown project, a window whose end is not after its
start, a missing file), said in one line before anything is done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from event_metrics import event_files, export, importer, projects
from event_metrics.import_formats import SOURCES, LineDecoder, Source
from event_metrics.metrics import InvalidParameter
from event_metrics.postgres import TRANSIENT_ERRORS
from event_metrics.progress import ProgressBar
from event_metrics.retry import describe
from event_metrics.settings import Settings

FORMATS = ("ndjson", "parquet")
Database = Callable[[Settings], contextlib.AbstractContextManager[Settings]]


class CommandError(Exception):
    """The command could not do its work; the message says why (exit status 1)."""

    status = 1


class Refused(CommandError):
    """The command asks for what cannot be (exit status 2)."""

    status = 2


async def _connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(settings.database_url, timeout=10)
    except TRANSIENT_ERRORS as exc:
        raise CommandError(f"cannot reach PostgreSQL: {describe(exc)}") from None


async def _project_id(connection: asyncpg.Connection, name: str) -> int:
    found = await connection.fetchval(projects.PROJECT_ID, name)
    if found is None:
        raise Refused(f"no project named {name!r} (event-metrics projects list shows them)")
    return int(found)


# --- export ------------------------------------------------------------------------------


def export_events(settings: Settings, args: argparse.Namespace, database: Database) -> None:
    try:
        window = export.parse_window(
            project_id=0, start=args.start, end=args.end, event_name=args.event_name
        )
    except InvalidParameter as exc:
        raise Refused(str(exc)) from None
    target = Path(args.file)
    if args.format == "parquet" and target == Path("-"):
        raise Refused("Parquet cannot go to standard output: name a file")
    if args.format == "parquet":
        _require_pyarrow()
    with database(settings) as settings:
        try:
            total = asyncio.run(_export(settings, args.project, window, target, args.format))
        except BrokenPipeError:  # `export - | head`: the reader has what it wanted
            # Python would complain again when it flushes stdout on the way out.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise CommandError("standard output was closed before the export ended") from None
    print(f"exported {total:,} events of project {args.project!r} to {target}", file=sys.stderr)


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise CommandError(event_files.NEEDS_PYARROW) from None


async def _export(
    settings: Settings, project: str, window: export.ExportWindow, target: Path, kind: str
) -> int:
    connection = await _connect(settings)
    try:
        window = msgspec.structs.replace(window, project_id=await _project_id(connection, project))
        total = await export.count(connection, window)
        bar = ProgressBar("export")
        written = 0
        with _written(target, kind) as out:
            page_rows = settings.lifecycle.export_page_rows
            async for page in export.pages(connection, window, page_rows=page_rows):
                out.write(page)
                written += len(page)
                bar.update(written / total if total else 1.0, written)
        bar.update(1.0, written)
        bar.finish()
        return written
    finally:
        await connection.close()


class _Stdout:
    def write(self, records: Any) -> None:
        sys.stdout.buffer.write(export.encode_lines(records))

    def close(self) -> None:
        sys.stdout.buffer.flush()


@contextlib.contextmanager
def _written(target: Path, kind: str) -> Iterator[Any]:
    """A writer for the file; the file appears under its name only once complete."""
    if target == Path("-"):
        yield _Stdout()
        return
    partial = target.with_name(target.name + ".partial")
    out: Any = event_files.ParquetWriter(partial) if kind == "parquet" else None
    if out is None:
        out = event_files.NdjsonWriter(partial, gzipped=target.suffix == ".gz")
    try:
        yield out
        out.close()
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(Exception):
            out.close()
        partial.unlink(missing_ok=True)
        raise


# --- import ------------------------------------------------------------------------------


def import_events(settings: Settings, args: argparse.Namespace, database: Database) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise Refused(f"no file {str(path)!r}")
    with database(settings) as settings:
        report = asyncio.run(_import(settings, args, path))
    unit = "row" if event_files.kind_of(path) == "parquet" else "line"
    for rejection in report.rejections:
        print(f"{unit} {rejection.line}: {rejection.reason}", file=sys.stderr)
    if report.rejected > len(report.rejections):
        print(f"... and {report.rejected - len(report.rejections):,} more refused {unit}s",
              file=sys.stderr)  # fmt: skip
    rate = report.events / report.seconds if report.seconds else 0
    print(
        f"{path}: {report.events:,} events read, {report.stored:,} stored, "
        f"{report.duplicates:,} already stored, {report.rejected:,} refused "
        f"in {report.seconds:.1f} s ({rate:,.0f} events/s)",
        file=sys.stderr,
    )
    if report.rejected:
        what = "nothing was stored (--all-or-nothing)" if args.all_or_nothing else (
            "every other event was stored")  # fmt: skip
        raise CommandError(f"{report.rejected:,} {unit}s were refused; {what}")


async def _import(
    settings: Settings, args: argparse.Namespace, path: Path
) -> importer.ImportReport:
    connection = await _connect(settings)
    try:
        project_id = await _project_id(connection, args.project)
    finally:
        await connection.close()
    source: Source = args.source
    decoder = LineDecoder(source, settings.ingest, project_id=project_id)
    batch_rows = settings.lifecycle.import_batch_rows
    assert settings.database_url is not None
    try:
        if args.all_or_nothing:
            checking = ProgressBar("check ")
            checked = await importer.check_file(
                path, decoder, batch_rows=batch_rows,
                progress=lambda done, report: checking.update(done, report.events),
            )  # fmt: skip
            checking.finish()
            if checked.rejected:
                return checked
        bar = ProgressBar("import")
        report = await importer.import_file(
            settings.database_url, path, decoder, batch_rows=batch_rows,
            connections=args.connections, max_events_per_s=args.max_rate,
            progress=lambda done, report: bar.update(done, report.stored + report.duplicates),
        )  # fmt: skip
        bar.update(1.0, report.stored + report.duplicates)
        bar.finish()
        return report
    except (event_files.UnreadableFile, importer.ImportFailed) as exc:
        raise CommandError(str(exc)) from None


# --- the parser --------------------------------------------------------------------------


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser],
                 database: Database) -> None:  # fmt: skip
    """Add `export` and `import` to the CLI's subcommands (`command` is cli.py's helper)."""
    sub = command(
        "export",
        lambda settings, args: export_events(settings, args, database),
        "write a project's events in [--from, --to) to FILE, oldest first, with a "
        "progress bar: NDJSON (gzip if FILE ends in .gz; - for standard output) or Parquet",
        (None, "lifecycle"),
    )
    sub.add_argument("--project", required=True, help="the project's name")
    sub.add_argument("--from", dest="start", help="window start, RFC 3339 (default: the first)")
    sub.add_argument("--to", dest="end", help="window end, exclusive (default: the last)")
    sub.add_argument("--event-name", help="only this event")
    sub.add_argument("--format", choices=FORMATS, default="ndjson", help="default ndjson")
    sub.add_argument("file", metavar="FILE", help="where to write; - for standard output")
    sub = command(
        "import",
        lambda settings, args: import_events(settings, args, database),
        "store a file's events in a project, checked and deduplicated as POST /events does "
        "(re-running it stores nothing twice): NDJSON, gzip or Parquet, of our own events "
        "or Segment, RudderStack or PostHog exports",
        (None, "ingest", "lifecycle"),
    )
    sub.add_argument("--project", required=True, help="the project's name")
    sub.add_argument(
        "--source", choices=SOURCES, default="native",
        help="what the lines are: our own events (default), Segment or RudderStack messages, "
        "or PostHog events",
    )  # fmt: skip
    sub.add_argument(
        "--all-or-nothing", action="store_true",
        help="check the whole file first; store nothing if any line is refused",
    )  # fmt: skip
    sub.add_argument(
        "--connections", type=_positive, default=2,
        help="PostgreSQL connections writing at once (default 2)",
    )  # fmt: skip
    sub.add_argument(
        "--max-rate", type=float, default=0.0, metavar="EVENTS_PER_S",
        help="store at most this many events per second (default 0: as fast as it goes)",
    )  # fmt: skip
    sub.add_argument("file", metavar="FILE", help="NDJSON, gzip or Parquet (told by its content)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
