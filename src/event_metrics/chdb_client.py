"""Current ClickHouse in this process, through the `chdb` package (the `chdb` extra).

`chdb:///path/to/dir` keeps the mirror's data under that directory. chdb runs one
embedded server per process, on one directory, and a directory belongs to one process
at a time (ClickHouse locks `dir/status`): the service must then run as one process, its
replicator a task in it (cli.py, docs/architecture.md), and no other process may open the
directory while it runs. Within the process, each client is a chdb `Session` of its own:
sessions on one directory share the data and each keeps its own current database.

The engine releases the GIL while a query runs, so a query in a worker thread does not
hold up the event loop. A lock serialises each client's own calls, as clickhouse-driver's
clients need too.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from clickhouse_driver.util.escape import escape_param, escape_params

from event_metrics.clickhouse_client import Rows, ServerError, parse_version

# The insert format chdb parses fastest from Python (one JSON object of columns): ~390k
# rows/s of events, against ~60k/s for VALUES text (docs/benchmarks.md).
INSERT_FORMAT = "JSONColumns"
READ_FORMAT = "JSONCompact"
_CODE = re.compile(r"Code: (\d+)")


class _ServerInfo:
    def get_timezone(self) -> str:
        return "UTC"  # a datetime parameter is written as UTC wall time


class _EscapeContext:
    """What clickhouse-driver's escaping reads of a connection."""

    server_info = _ServerInfo()


_CONTEXT = _EscapeContext()


class _Result(msgspec.Struct):
    meta: list[dict[str, str]]
    data: list[list[Any]]


def _converter(kind: str) -> Callable[[Any], Any] | None:
    """How a JSON value of a ClickHouse type becomes what clickhouse-driver returns."""
    if kind.startswith("Nullable("):
        inner = _converter(kind[len("Nullable(") : -1])
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if kind.startswith(("UInt", "Int")):
        return int  # 64-bit integers may come quoted
    if kind.startswith("Float"):
        return float
    if kind == "Date" or kind == "Date32":
        return dt.date.fromisoformat
    if kind.startswith("DateTime"):
        zone = kind[len("DateTime('") : -2] if kind.startswith("DateTime('") else None
        tz = ZoneInfo(zone) if zone else None
        return lambda v: dt.datetime.fromisoformat(v).replace(tzinfo=tz)
    return None


def server_error(exc: Exception) -> Exception:
    """clickhouse-driver's exception for a chdb error, with ClickHouse's error code."""
    message = str(exc)
    found = _CODE.search(message)
    error: Exception = ServerError(message, code=int(found.group(1)) if found else None)
    return error


class ChdbClient:
    """A chdb session on a directory, as a ClickHouseClient."""

    def __init__(self, path: str) -> None:
        try:
            from chdb import session
        except ImportError:  # an optional extra
            raise RuntimeError(
                "chdb:// URLs need the chdb package: pip install 'event-metrics[chdb]'"
            ) from None
        self.path = path
        try:
            opened = session.Session(path)
        except RuntimeError as exc:
            raise RuntimeError(
                f"chdb cannot open {path!r}: {exc}. chdb keeps one directory per process, "
                "and one process per directory: is another process using it?"
            ) from None
        self._session: Any = opened
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None

    def version(self) -> tuple[int, int]:
        if self._version is None:
            self._version = parse_version(self.execute("SELECT version()")[0][0])
        return self._version

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows:
        if params:
            sql = sql % escape_params(params, _CONTEXT)
        raw = self._query(sql, READ_FORMAT)
        if not raw.strip():
            return []  # a statement that returns no result set
        result = msgspec.json.decode(raw, type=_Result)
        convert = [_converter(column["type"]) for column in result.meta]
        if not any(convert):
            return [tuple(row) for row in result.data]
        return [
            tuple(v if c is None else c(v) for c, v in zip(convert, row, strict=True))
            for row in result.data
        ]

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        data: Sequence[Sequence[Any]],
        *,
        settings: Mapping[str, int | str] | None = None,
    ) -> None:
        clause = ", ".join(
            f"{k} = {escape_param(v, _CONTEXT)}" for k, v in (settings or {}).items()
        )
        body = msgspec.json.encode(dict(zip(columns, (list(c) for c in data), strict=True)))
        self._query(
            f"INSERT INTO {table} ({', '.join(columns)})"
            + (f" SETTINGS {clause}" if clause else "")
            + f" FORMAT {INSERT_FORMAT} "
            + body.decode(),
            "CSV",
        )

    def _query(self, sql: str, fmt: str) -> bytes:
        with self._lock:
            if self._session is None:
                raise RuntimeError("the chdb client is closed")
            try:
                result = self._session.query(sql, fmt)
            except RuntimeError as exc:
                raise server_error(exc) from None
        raw: bytes = result.bytes()
        return raw

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
