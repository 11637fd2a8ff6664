"""The seam between the service and a ClickHouse: one small interface, two engines.

The replicator, `verify`, the schema and /metrics talk to a `ClickHouseClient`:

* `clickhouse://user:pass@host:9000/db`: a ClickHouse server over the native protocol
  (clickhouse-driver), ClickHouse 18.16 or a current release;
* `chdb:///path/to/dir` (or `chdb://relative/dir`): current ClickHouse embedded in this
  process by the `chdb` package (chdb_client.py), keeping its data under that directory.

Both take `%(name)s` parameters, substituted on the client side with clickhouse-driver's
escaping (18.16 has no server-side parameters), return rows as tuples of the Python
values clickhouse-driver gives, and raise clickhouse-driver's `ServerException` with
ClickHouse's error code, so callers handle one set of errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

Rows = list[tuple[Any, ...]]
CHDB_SCHEME = "chdb"
SERVER_SCHEMES = ("clickhouse", "clickhouses")

# Errors that mean "ClickHouse is not there right now", worth a retry.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    TimeoutError,
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
)
# clickhouse-driver's server error: `.code` is ClickHouse's error code.
ServerError: Any = ch_errors.ServerException
# ClickHouse error codes the service acts on.
UNKNOWN_TABLE = 60
ILLEGAL_FINAL = 181  # FINAL on a table whose engine has no FINAL (plain MergeTree)


class ClickHouseClient(Protocol):
    """What the service needs of a ClickHouse connection. Not safe to share between
    threads at once: /metrics keeps a pool of them (clickhouse.ClickHousePool)."""

    def version(self) -> tuple[int, int]:
        """The engine's (major, minor) version."""
        ...

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows:
        """Run a statement; `%(name)s` in `sql` is substituted only when params are given."""
        ...

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        data: Sequence[Sequence[Any]],
        *,
        settings: Mapping[str, int | str] | None = None,
    ) -> None:
        """Insert one block given column-wise (`data[i]` holds `columns[i]`'s values;
        DateTime columns as whole seconds since 1970), with per-insert settings such as
        `insert_deduplication_token`."""
        ...

    def close(self) -> None: ...


def is_chdb(url: str) -> bool:
    return urlsplit(url).scheme == CHDB_SCHEME


def chdb_path(url: str) -> str:
    """The directory of a chdb:// URL: chdb:///abs/dir is absolute, chdb://rel/dir relative."""
    parts = urlsplit(url)
    return parts.netloc + parts.path


def check_url(url: str) -> str | None:
    """What is wrong with a ClickHouse URL, or None."""
    parts = urlsplit(url)
    if parts.scheme == CHDB_SCHEME:
        return None if chdb_path(url) else "chdb:// needs a directory, e.g. chdb:///var/lib/em"
    if parts.scheme in SERVER_SCHEMES:
        return None
    return f"scheme {parts.scheme!r} is neither clickhouse:// nor chdb://"


def parse_version(text: str) -> tuple[int, int]:
    major, minor, *_ = (text.strip().strip('"') + ".0").split(".")
    return int(major), int(minor)


class DriverClient:
    """A ClickHouse server through clickhouse-driver (connects on first use)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._version: tuple[int, int] | None = None

    def version(self) -> tuple[int, int]:
        if self._version is None:
            self._version = parse_version(self.execute("SELECT version()")[0][0])
        return self._version

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows:
        rows: Rows = self.client.execute(sql, params)
        return rows

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        data: Sequence[Sequence[Any]],
        *,
        settings: Mapping[str, int | str] | None = None,
    ) -> None:
        # Data goes as the driver's second argument: inline VALUES text hangs on 18.16.
        self.client.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES",
            list(data),
            columnar=True,
            settings=dict(settings or {}),
        )

    def close(self) -> None:
        self.client.disconnect()


def connect(url: str, *, timeout_s: float = 10) -> ClickHouseClient:
    """A client for a clickhouse:// or chdb:// URL."""
    parts = urlsplit(url)
    if parts.scheme == CHDB_SCHEME:
        from event_metrics.chdb_client import ChdbClient

        return ChdbClient(chdb_path(url))
    options = dict(parse_qsl(parts.query))
    # Timeouts from the URL win; otherwise a down server fails fast instead of hanging.
    options.setdefault("connect_timeout", str(min(timeout_s, 5)))
    options.setdefault("send_receive_timeout", str(timeout_s))
    return DriverClient(Client.from_url(urlunsplit(parts._replace(query=urlencode(options)))))
