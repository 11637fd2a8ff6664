"""Import: a file of events into one project, through the checks and the write path of
POST /events, fast enough for backfills.

A thread reads and decodes the file a batch at a time (import_formats.py: the endpoints'
own validation, msgspec underneath) while `connections` writers commit earlier batches
with the writer's own `write_copy`: COPY into the staging table, then INSERT ... SELECT
... ON CONFLICT DO NOTHING. So an event whose key is stored already is a duplicate, and
running an import again stores nothing new. Each batch is a transaction of its own:
memory stays bounded by a few batches whatever the file, and the replicator and the
rollup refresher, which follow committed transactions (checkpoint.py), start on the first
batches while the rest are still being read. Imported rows get the transaction ids of
their batches, so both followers fold and copy them like any late events: the rollup
buckets they touch become exact without a rebuild.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import asyncpg

from event_metrics.event_files import Batch, batches
from event_metrics.events import InvalidEvent
from event_metrics.import_formats import LineDecoder
from event_metrics.postgres import TRANSIENT_ERRORS, create_pool
from event_metrics.retry import Backoff, describe
from event_metrics.schema import Row
from event_metrics.writer import init_writer_connection, write_copy

MAX_LISTED = 20  # rejected lines listed one by one; the rest are counted
RETRY_FOR_S = 60.0  # how long a batch is retried while PostgreSQL is unreachable


class Rejection(NamedTuple):
    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did: events read, stored, already there, refused (the first few
    with their line numbers)."""

    events: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0
    # The decoding thread and the writers (a row PostgreSQL refuses) both reject.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reject(self, line: int, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            if len(self.rejections) < MAX_LISTED:
                self.rejections.append(Rejection(line, reason))


class ImportFailed(Exception):
    """PostgreSQL stayed unreachable; what was committed stays (a re-run is safe)."""


class Decoded(NamedTuple):
    rows: list[Row]
    lines: list[int]  # each row's line number
    done: float


Progress = Callable[[float, ImportReport], None]


def _decoded(source: Iterator[Batch], decoder: LineDecoder, report: ImportReport) -> Decoded | None:
    """The next batch's rows; its refused lines go to the report. Runs in a thread."""
    batch = next(source, None)
    if batch is None:
        return None
    outcomes = decoder.decode(batch.lines, datetime.now(UTC))
    rows, lines = [], []
    for number, outcome in zip(batch.numbers, outcomes, strict=True):
        if isinstance(outcome, InvalidEvent):
            report.reject(number, str(outcome))
        else:
            rows.append(outcome)
            lines.append(number)
    report.events += len(outcomes)
    return Decoded(rows, lines, batch.done)


async def check_file(
    path: Path, decoder: LineDecoder, *, batch_rows: int, progress: Progress | None = None
) -> ImportReport:
    """Decode the whole file without storing anything: the refused lines."""
    report = ImportReport()
    started = time.monotonic()
    source = batches(path, batch_rows=batch_rows)
    while (decoded := await asyncio.to_thread(_decoded, source, decoder, report)) is not None:
        if progress is not None:
            progress(decoded.done, report)
    report.seconds = time.monotonic() - started
    return report


async def import_file(
    database_url: str,
    path: Path,
    decoder: LineDecoder,
    *,
    batch_rows: int,
    connections: int = 2,
    max_events_per_s: float = 0,
    progress: Progress | None = None,
) -> ImportReport:
    """Store the file's valid events; the report says what happened to each line."""
    report = ImportReport()
    started = time.monotonic()
    pool = await create_pool(database_url, size=connections, init=init_writer_connection)
    queue: asyncio.Queue[Decoded | None] = asyncio.Queue(maxsize=connections)

    async def read() -> None:
        source = batches(path, batch_rows=batch_rows)
        try:
            while decoded := await asyncio.to_thread(_decoded, source, decoder, report):
                if max_events_per_s:  # pace: never ahead of the rate asked for
                    ahead = report.events / max_events_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await queue.put(decoded)
        finally:
            for _ in range(connections):
                await queue.put(None)

    async def write() -> None:
        while (decoded := await queue.get()) is not None:
            await _write_batch(pool, decoded.rows, decoded.lines, report)
            if progress is not None:
                progress(decoded.done, report)

    try:
        reading = asyncio.create_task(read())
        writers = [asyncio.create_task(write()) for _ in range(connections)]
        try:
            await asyncio.gather(reading, *writers)
        finally:
            for task in (reading, *writers):
                task.cancel()
            await asyncio.gather(reading, *writers, return_exceptions=True)
    finally:
        await pool.close()
    report.seconds = time.monotonic() - started
    return report


async def _write_batch(
    pool: asyncpg.Pool, rows: Sequence[Row], lines: Sequence[int], report: ImportReport
) -> None:
    """Commit one batch, retrying while PostgreSQL is unreachable (ON CONFLICT makes a
    repeat of a batch that did commit harmless). A batch PostgreSQL refuses is halved
    until the refused rows are found: they are reported, the others stored."""
    if not rows:
        return
    backoff = Backoff(initial_s=0.1, max_s=5.0)
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            async with pool.acquire() as connection:
                stored = await write_copy(connection, rows)
            break
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() > deadline:
                raise ImportFailed(
                    f"PostgreSQL is unreachable ({describe(exc)}); {report.stored} events "
                    "were stored before it went; running the import again is safe"
                ) from None
            await asyncio.sleep(backoff.next_delay())
        except asyncpg.PostgresError as exc:
            if len(rows) == 1:
                report.reject(lines[0], f"refused by PostgreSQL: {describe(exc)}")
                return
            half = len(rows) // 2
            await _write_batch(pool, rows[:half], lines[:half], report)
            await _write_batch(pool, rows[half:], lines[half:], report)
            return
    count = len(rows) if stored is None else len(stored)
    report.stored += count
    report.duplicates += len(rows) - count
