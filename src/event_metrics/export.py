"""Export: a project's stored events, in timestamp order, as lines of our own event format.

Each line is an event as POST /events takes it, carrying everything stored that a client
can send: the idempotency key (so a re-import is a duplicate, not a second event), the
time with its offset (UTC, to the microsecond), the channel, and the properties exactly as
PostgreSQL, the source of truth, stores them. `received_at` is not a field of the format:
it is when this server received the event, and an import is a new receipt.

Pages are read by keyset over (ts, id) inside one REPEATABLE READ transaction: every
page costs one short index range scan whatever the window, and the whole export is one
consistent snapshot (a read-only transaction takes no transaction id, so it does not
hold back the followers' horizon, checkpoint.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import asyncpg
import msgspec

from event_metrics.events import EventIn
from event_metrics.metrics import InvalidParameter

# The page query: the next rows after the last one sent. `ts >= $4` bounds the index scan;
# the row comparison then skips what an earlier page already sent at that same instant.
_SELECT = """
SELECT id, ts, idempotency_key, event_name, user_id, channel, properties::text
FROM events
WHERE project_id = $1 AND ts >= $2 AND ts < $3
  AND ts >= $4 AND (ts, id) > ($4, $5)
"""
PAGE = _SELECT + " ORDER BY ts, id LIMIT $6"
PAGE_OF_EVENT = _SELECT + " AND event_name = $7 ORDER BY ts, id LIMIT $6"
SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
COUNT = "SELECT count(*) FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3"
COUNT_OF_EVENT = COUNT + " AND event_name = $4"

# An open window: everything a timestamptz holds.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class ExportedEvent(msgspec.Struct, omit_defaults=True):
    """One exported line: the fields of EventIn (a line is a valid POST /events body)."""

    event_name: str
    user_id: str
    timestamp: Annotated[datetime, msgspec.Meta(examples=["2026-11-01T09:15:00.25Z"])]
    idempotency_key: str
    channel: str | None = None  # stored as '' when the client sent none
    properties: msgspec.Raw | None = None


if not {f.name for f in msgspec.structs.fields(ExportedEvent)} <= set(EventIn.__struct_fields__):
    raise TypeError("ExportedEvent must only use EventIn's fields")  # pragma: no cover


class ExportBusy(Exception):
    """As many exports as allowed are running in this process; retry later."""


class ExportWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A validated export request: the project, the half-open window, an event name."""

    project_id: int
    start: datetime = EARLIEST
    end: datetime = LATEST
    event_name: str | None = None


def parse_instant(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 bound (None when absent), or InvalidParameter naming it."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    elif " " in text and "T" in text:  # a '+' sent unencoded in a query string
        text = text.replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(name, f"{name} is not an RFC 3339 time: {value[:60]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidParameter(name, f"{name} needs a UTC offset or Z: {value[:60]!r}")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidParameter(name, f"{name} is out of range: {value[:60]!r}") from None


def parse_window(
    *, project_id: int, start: str | None, end: str | None, event_name: str | None
) -> ExportWindow:
    """Validate the raw parameters; absent bounds leave that side open."""
    start_at = parse_instant("from", start) or EARLIEST
    end_at = parse_instant("to", end) or LATEST
    if end_at <= start_at:
        raise InvalidParameter("to", "to must be after from")
    if event_name is not None and not 0 < len(event_name) <= 200:
        raise InvalidParameter("event_name", "event_name must be 1 to 200 characters")
    if event_name is not None and "\x00" in event_name:
        raise InvalidParameter("event_name", "event_name must not contain NUL characters")
    return ExportWindow(project_id=project_id, start=start_at, end=end_at, event_name=event_name)


def exported(record: Sequence[Any]) -> ExportedEvent:
    """A fetched row (id, ts, key, name, user, channel, properties) as an exported line."""
    _, ts, key, name, user, channel, properties = record
    return ExportedEvent(
        event_name=name,
        user_id=user,
        timestamp=ts,
        idempotency_key=key,
        channel=channel or None,
        properties=None if properties is None else msgspec.Raw(properties.encode()),
    )


_encoder = msgspec.json.Encoder()


def encode_lines(records: Sequence[Any]) -> bytes:
    """Rows as NDJSON, each line ending in a newline."""
    return _encoder.encode_lines([exported(record) for record in records])


async def pages(
    connection: asyncpg.Connection, window: ExportWindow, *, page_rows: int
) -> AsyncGenerator[list[asyncpg.Record], None]:
    """The window's rows in (ts, id) order, a page at a time, from one snapshot.

    The caller owns the connection; the transaction opened here is ended when the
    iteration ends, however it ends.
    """
    await connection.execute(SNAPSHOT)
    try:
        after: tuple[datetime, int] = (window.start, 0)
        query, extra = PAGE, cast(tuple[str, ...], ())
        if window.event_name is not None:
            query, extra = PAGE_OF_EVENT, (window.event_name,)
        while True:
            page = await connection.fetch(
                query, window.project_id, window.start, window.end, *after, page_rows, *extra
            )
            if page:
                yield page
            if len(page) < page_rows:
                return
            last = page[-1]
            after = (last[1], last[0])
    finally:
        # Shielded: a client that goes away cancels the stream, and the snapshot must
        # still end before the connection is reused or closed.
        await asyncio.shield(_quietly(connection.execute("ROLLBACK")))


async def _quietly(step: Awaitable[Any]) -> None:
    """Await a clean-up step, ignoring a connection that is gone already (client gone,
    server down): inside a shield its error would otherwise never be retrieved."""
    with contextlib.suppress(asyncpg.InterfaceError, OSError, asyncpg.PostgresError):
        await step


async def count(connection: asyncpg.Connection, window: ExportWindow) -> int:
    """How many events the window holds (for a progress bar)."""
    if window.event_name is None:
        total = await connection.fetchval(COUNT, window.project_id, window.start, window.end)
    else:
        total = await connection.fetchval(
            COUNT_OF_EVENT, window.project_id, window.start, window.end, window.event_name
        )
    return int(total)


class Exporter:
    """Runs exports for the HTTP route: each on a connection of its own (an export may
    last minutes, and must not hold a /metrics connection that long), at most
    `max_running` at once per process."""

    def __init__(self, database_url: str, *, page_rows: int, max_running: int) -> None:
        self.database_url = database_url
        self.page_rows = page_rows
        self.max_running = max_running
        self.running = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one export, or ExportBusy when too many are running."""
        if self.running >= self.max_running:
            raise ExportBusy(
                f"{self.running} exports are running in this process, the most it runs at once"
            )
        self.running += 1
        try:
            connection = await asyncpg.connect(self.database_url, timeout=10)
            try:
                yield connection
            finally:
                await asyncio.shield(_quietly(connection.close(timeout=5)))
        finally:
            self.running -= 1
