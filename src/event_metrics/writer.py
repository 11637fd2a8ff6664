"""Writers: take batches off the queue and commit them to PostgreSQL, idempotently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from event_metrics import telemetry
from event_metrics.postgres import TRANSIENT_ERRORS
from event_metrics.queue import IngestQueue, Ticket
from event_metrics.retry import Backoff, describe
from event_metrics.schema import COLUMN_TYPES, COLUMNS, EVENT_KEY, Row
from event_metrics.settings import WriterSettings
from event_metrics.worker import LoopState, StallWatch

log = logging.getLogger(__name__)


# What a column travels as, when it is not its stored type. jsonb arrives as JSON text
# and is cast once, in the INSERT. A time arrives as integer microseconds since 1970:
# asyncpg's datetime encoder cost more than the rest of a row's encoding (two times a
# row: 4.5 of 6.6 us of COPY encoding per event, docs/benchmarks.md).
_SENT_AS = {"jsonb": "text", "timestamptz": "bigint"}


def _staging_type(name: str) -> str:
    kind = COLUMN_TYPES[name].postgres
    return _SENT_AS.get(kind, kind)


def _stored(name: str, source: str) -> str:
    kind = COLUMN_TYPES[name].postgres
    if kind == "jsonb":
        return f"{source}::jsonb"
    if kind == "timestamptz":
        # Exact for any bigint: whole seconds through to_timestamp (an integer-valued
        # float8 times 10^6 is exact up to year 9999), the rest as an interval.
        return f"to_timestamp({source} / 1000000) + ({source} % 1000000) * interval '1 microsecond'"
    return source


_NAMES = ", ".join(COLUMNS)
_KEY = ", ".join(EVENT_KEY)
Key = tuple[int, str]  # (project_id, idempotency_key)
STAGING_COLUMNS = ("ord", *COLUMNS)

# A temp table lives as long as its connection: created once per writer connection.
CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS events_staging (ord integer NOT NULL, "
    + ", ".join(f"{name} {_staging_type(name)}" for name in COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)

# COPY into staging, then one INSERT ... SELECT: the fastest path measured here. The
# ORDER BY makes the first of several same-key events in a batch the one that is stored.
# No RETURNING: the command's row count says whether every row was new (the usual case);
# only when it is short are the stored keys read, by this transaction's id.
INSERT_FROM_STAGING = f"""
INSERT INTO events ({_NAMES})
SELECT {", ".join(_stored(name, name) for name in COLUMNS)}
FROM events_staging
ORDER BY ord
ON CONFLICT ({_KEY}) DO NOTHING
"""
STORED_NOW = f"SELECT {_KEY} FROM events WHERE txid = pg_current_xact_id()"

_ARRAYS = ", ".join(f"${n}::{_staging_type(name)}[]" for n, name in enumerate(COLUMNS, start=1))
INSERT_UNNEST = f"""
INSERT INTO events ({_NAMES})
SELECT {", ".join(_stored(name, f"batch.{name}") for name in COLUMNS)}
FROM unnest({_ARRAYS}) WITH ORDINALITY AS batch({_NAMES}, ord)
ORDER BY ord
ON CONFLICT ({_KEY}) DO NOTHING
RETURNING {_KEY}
"""


class StorageUnavailable(Exception):
    """PostgreSQL could not commit the events in time; nothing was acknowledged."""


class StorageRejected(Exception):
    """PostgreSQL refused the events for a reason a retry will not fix."""


async def init_writer_connection(connection: asyncpg.Connection) -> None:
    """Pool init hook: give each writer connection its staging table."""
    await connection.execute(CREATE_STAGING)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Where, in a staging record (its position first, then Row's fields), the times are.
_TIMES = [at for at, name in enumerate(COLUMNS, 1) if COLUMN_TYPES[name].postgres == "timestamptz"]
_values = msgspec.structs.astuple  # a Row's values, in the order of its fields (COLUMNS)


def staging_records(rows: Sequence[Row]) -> list[list[Any]]:
    """Each row as the staging table takes it: its position first, times as integers."""
    records = [[position, *_values(row)] for position, row in enumerate(rows)]
    for at in _TIMES:
        # A request's rows share one received_at, and ts is that same object when the
        # client sent no timestamp: convert each run of one object once.
        last: datetime | None = None
        micros = 0
        for record in records:
            if record[at] is not last:
                last = record[at]
                micros = (record[at] - _EPOCH) // _MICROSECOND
            record[at] = micros
    return records


async def write_copy(connection: asyncpg.Connection, rows: Sequence[Row]) -> set[Key] | None:
    """COPY into the staging table, then INSERT ... SELECT; return the keys stored, or
    None when every row was stored."""
    records = staging_records(rows)
    async with connection.transaction():
        await connection.copy_records_to_table(
            "events_staging", records=records, columns=STAGING_COLUMNS
        )
        status = await connection.execute(INSERT_FROM_STAGING)  # "INSERT 0 <rows>"
        if int(status.rsplit(" ", 1)[1]) == len(rows):
            return None
        return {tuple(record) for record in await connection.fetch(STORED_NOW)}


async def write_unnest(connection: asyncpg.Connection, rows: Sequence[Row]) -> set[Key] | None:
    """One prepared INSERT ... SELECT FROM unnest(arrays): a single round trip. Returns
    what write_copy does: the keys stored, or None when every row was stored."""
    columns = [list(column) for column in zip(*staging_records(rows), strict=True)][1:]
    stored = {tuple(record) for record in await connection.fetch(INSERT_UNNEST, *columns)}
    # As many distinct keys stored as rows sent: every row was new (the usual case).
    return None if len(stored) == len(rows) else stored


async def write_rows(
    connection: asyncpg.Connection, tickets: Sequence[Ticket], *, copy_min_rows: int
) -> int:
    """Commit every ticket's rows in one transaction; resolve each ticket; return rows stored."""
    rows = [row for ticket in tickets for row in ticket.rows]
    # Small batches: one round trip beats COPY's several; large ones: COPY is faster
    # (bench/write_paths.py measures the crossover).
    write = write_copy if len(rows) >= copy_min_rows else write_unnest
    inserted = await write(connection, rows)
    committed = time.monotonic()
    stored = len(rows) if inserted is None else len(inserted)  # before _fresh consumes it
    for ticket in tickets:
        outcome = [True] * len(ticket.rows) if inserted is None else _fresh(ticket.rows, inserted)
        telemetry.count_committed(ticket.protocol, outcome, committed - ticket.enqueued_at)
        if not ticket.future.done():
            ticket.future.set_result(outcome)
    return stored


def _fresh(rows: Sequence[Row], inserted: set[Key]) -> list[bool]:
    """Which of a request's rows were stored now; consumes their keys from `inserted`."""
    outcome = []
    for row in rows:
        key = (row.project_id, row.idempotency_key)
        fresh = key in inserted
        if fresh:
            inserted.discard(key)  # a repeat later in the batch is a duplicate
        outcome.append(fresh)
    return outcome


class _Lease:
    """The pool connection one writer keeps from batch to batch.

    Handing it back after every batch would cost a second round trip per batch: asyncpg
    resets a released connection with a query (RESET ALL, UNLISTEN *, ...).
    """

    __slots__ = ("connection", "pool")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.connection: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self.connection is None:
            self.connection = await self.pool.acquire()
        return self.connection

    async def drop(self) -> None:
        """Close a connection in an unknown state; the next get() takes a fresh one."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        # A connection the server closed has already gone back to the pool on its own.
        with contextlib.suppress(asyncpg.InterfaceError):
            connection.terminate()
        await self.pool.release(connection)

    async def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await self.pool.release(connection)


class WriterPool:
    """N writer tasks draining one IngestQueue into PostgreSQL."""

    def __init__(self, settings: WriterSettings, queue: IngestQueue, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.rows_written = 0
        self.commits = 0
        self.loop_state = LoopState("writers", log, state="running")
        self.stall = StallWatch("writers", log, settings.stall_s, "a commit")
        self._tasks: list[asyncio.Task[None]] = []
        self._stall_watch: asyncio.Task[None] | None = None
        # Batch -> when its first write attempt started: how /health sees a stall.
        self._in_flight: dict[int, tuple[float, list[Ticket]]] = {}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"writer-{n}") for n in range(self.settings.count)
        ]
        self._stall_watch = asyncio.create_task(
            self.stall.watch(self.oldest_in_flight_s, self._running), name="writer-stall-watch"
        )

    def _running(self) -> bool:
        return self.loop_state.state == "running"

    def oldest_in_flight_s(self) -> float:
        """Seconds the oldest batch being written has waited for its commit, 0 if none."""
        if not self._in_flight:
            return 0.0
        return time.monotonic() - min(started for started, _ in self._in_flight.values())

    def status(self) -> dict[str, Any]:
        """What /health reports: failing while writes fail, stalled while a commit hangs."""
        oldest = self.oldest_in_flight_s()
        stalled = self.stall.check(oldest, running=self._running())
        state = "stalled" if stalled else self.loop_state.state
        return {
            "state": state,
            "batches_in_flight": len(self._in_flight),
            "oldest_in_flight_s": round(oldest, 3),
            "commits": self.commits,
            "last_error": self.loop_state.last_error,
        }

    async def stop(self) -> None:
        """Take no new events, drain within the shutdown limit, then cancel the rest."""
        self.queue.close()
        if self._stall_watch is not None:
            self._stall_watch.cancel()
        timeout = self.settings.shutdown_timeout_s
        _, pending = await asyncio.wait(self._tasks, timeout=timeout) if self._tasks else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Whatever is left was never committed: tell the waiting clients so.
        leftovers = [t for _, batch in self._in_flight.values() for t in batch]
        for ticket in [*leftovers, *self.queue.take_all_nowait()]:
            if not ticket.future.done():
                ticket.future.set_exception(StorageUnavailable("the service shut down first"))

    def _may_start(self, waiting: int) -> bool:
        """Group commit: while one batch commits, the next gathers behind it. A second
        writer starts only on a backlog (a large request, or a commit that is slow): each
        commit has a fixed cost in PostgreSQL, so two small ones cost more than one twice
        their size."""
        return not self._in_flight or waiting >= self.settings.parallel_min_events

    async def _run(self) -> None:
        settings = self.settings
        lease = _Lease(self.pool)
        try:
            while True:
                batch = await self.queue.take(
                    settings.max_events_per_commit, settings.flush_interval_s, self._may_start
                )
                if not batch:
                    return
                self._in_flight[id(batch)] = (time.monotonic(), batch)
                try:
                    await self._write_with_retry(lease, batch)
                except Exception as exc:
                    # A writer that died would leave every later request waiting for its
                    # ack timeout: fail this batch (nothing was acknowledged) and go on.
                    log.exception("writer failed on a batch")
                    self.loop_state.fail(exc)
                    await lease.drop()
                    for ticket in batch:
                        if not ticket.future.done():
                            ticket.future.set_exception(StorageUnavailable(describe(exc)))
                finally:
                    del self._in_flight[id(batch)]
                    self.queue.wake()
        finally:
            await lease.release()

    async def _write_with_retry(self, lease: _Lease, batch: list[Ticket]) -> None:
        settings = self.settings
        backoff = Backoff(initial_s=settings.retry_initial_s, max_s=settings.retry_max_s)
        while True:
            try:
                connection = await lease.get()
                started = time.monotonic()
                stored = await write_rows(connection, batch, copy_min_rows=settings.copy_min_rows)
                telemetry.count_commit(sum(len(t.rows) for t in batch), time.monotonic() - started)
                # Added after the await: `+= await` would read the counter before it.
                self.rows_written += stored
                self.commits += 1
                self.loop_state.set("running")
                return
            except TRANSIENT_ERRORS as exc:
                # At-least-once: the same rows go again; ON CONFLICT makes a retry of a
                # batch that did commit harmless.
                await lease.drop()
                self.loop_state.fail(exc, retry_in_s=backoff.max_s)
                await asyncio.sleep(backoff.next_delay())
            except asyncpg.PostgresError as exc:
                if len(batch) > 1:
                    # Isolate the request that PostgreSQL refuses so the others still land.
                    for ticket in batch:
                        await self._write_with_retry(lease, [ticket])
                    return
                log.error("PostgreSQL refused a request's events: %s", describe(exc))
                if not batch[0].future.done():
                    batch[0].future.set_exception(StorageRejected(describe(exc)))
                return
