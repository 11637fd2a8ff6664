"""Event files on disk: read as numbered batches of JSON lines, written page by page.

Read: NDJSON, plain or gzip (several gzip members one after another too, as `cat a.gz
b.gz` makes), or Parquet; which one is told by the file's first bytes, not its name. A
Parquet row becomes the JSON object of its columns, so every source goes through the
same line decoding: a string column that holds a JSON object (`properties` in our
exports and PostHog's, where Parquet has no object type) is taken as that object.

Written: NDJSON (gzip when the name ends in .gz) or Parquet. Parquet needs pyarrow, the
`parquet` extra: the service itself never imports it.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from event_metrics import export

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
BLOCK_BYTES = 4 << 20
# Columns that hold a JSON object, stored as its text in Parquet.
JSON_COLUMNS = frozenset({"properties", "person_properties", "context", "traits",
                          "integrations", "$set", "$set_once"})  # fmt: skip
NEEDS_PYARROW = "Parquet needs pyarrow: pip install 'event-metrics[parquet]'"


class Batch(NamedTuple):
    """Lines of a file with their numbers (1-based; rows for Parquet), and how far into
    the file the batch ends, from 0 to 1."""

    numbers: list[int]
    lines: list[bytes]
    done: float


class UnreadableFile(Exception):
    """The file cannot be read as events at all (not gzip it claims to be, no pyarrow)."""


def kind_of(path: Path) -> str:
    """ "gzip", "parquet" or "ndjson", by the file's first bytes."""
    with path.open("rb") as file:
        head = file.read(4)
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head == PARQUET_MAGIC:
        return "parquet"
    return "ndjson"


def batches(path: Path, *, batch_rows: int) -> Iterator[Batch]:
    """The file's non-blank lines (Parquet: rows), `batch_rows` at a time."""
    kind = kind_of(path)
    if kind == "parquet":
        yield from _parquet_batches(path, batch_rows)
        return
    size = max(path.stat().st_size, 1)
    with path.open("rb") as raw:
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if kind == "gzip" else raw
        try:
            yield from _line_batches(stream, lambda: raw.tell() / size, batch_rows)
        except (gzip.BadGzipFile, EOFError, OSError) as exc:
            raise UnreadableFile(f"{path} is not valid gzip: {exc}") from None


def _line_batches(stream: io.BufferedIOBase, done: Any, batch_rows: int) -> Iterator[Batch]:
    carry = b""
    number = 0
    numbers: list[int] = []
    lines: list[bytes] = []
    while True:
        block = stream.read(BLOCK_BYTES)
        parts = (carry + block).split(b"\n")
        carry = parts.pop() if block else b""
        for part in parts:
            number += 1
            if part and not part.isspace():
                numbers.append(number)
                lines.append(part)
        if len(lines) >= batch_rows or not block:
            while len(lines) >= batch_rows or (lines and not block):
                yield Batch(numbers[:batch_rows], lines[:batch_rows], done())
                del numbers[:batch_rows], lines[:batch_rows]
        if not block:
            return


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UnreadableFile(NEEDS_PYARROW) from None
    return pyarrow


_encode = msgspec.json.Encoder().encode


def _json_value(name: str, value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # Parquet's unadjusted times: PostHog's are UTC
    if name in JSON_COLUMNS and isinstance(value, str) and value.lstrip()[:1] == "{":
        return msgspec.Raw(value.encode())
    return value


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[Batch]:
    pa = _pyarrow()
    try:
        file = pa.parquet.ParquetFile(path)
    except pa.ArrowException as exc:
        raise UnreadableFile(f"{path} is not a readable Parquet file: {exc}") from None
    total = max(file.metadata.num_rows, 1)
    number = 0
    for record_batch in file.iter_batches(batch_size=batch_rows):
        lines = []
        for row in record_batch.to_pylist():
            fields = {k: _json_value(k, v) for k, v in row.items() if v is not None}
            lines.append(_encode(fields))
        numbers = list(range(number + 1, number + len(lines) + 1))
        number += len(lines)
        yield Batch(numbers, lines, number / total)


# --- writing -----------------------------------------------------------------------------


class NdjsonWriter:
    """Exported pages as NDJSON lines, gzipped if asked."""

    def __init__(self, path: Path, *, gzipped: bool) -> None:
        self._raw = path.open("wb")
        self._out: io.BufferedIOBase = self._raw
        if gzipped:
            self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)

    def write(self, records: Sequence[Any]) -> None:
        self._out.write(export.encode_lines(records))

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()  # the gzip trailer
        self._raw.close()


class ParquetWriter:
    """Exported pages as Parquet: the fields of a line as columns, the properties as
    their JSON text, times as UTC microseconds."""

    ROW_GROUP_ROWS = 100_000

    def __init__(self, path: Path) -> None:
        pa = self._pa = _pyarrow()
        self.schema = pa.schema([
            ("event_name", pa.string()), ("user_id", pa.string()),
            ("timestamp", pa.timestamp("us", tz="UTC")), ("idempotency_key", pa.string()),
            ("channel", pa.string()), ("properties", pa.string()),
        ])  # fmt: skip
        self._writer = pa.parquet.ParquetWriter(path, self.schema, compression="zstd")
        self._pending: list[Sequence[Any]] = []

    def write(self, records: Sequence[Any]) -> None:
        self._pending.extend(records)
        if len(self._pending) >= self.ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        _, ts, keys, names, users, channels, properties = zip(*self._pending, strict=True)
        columns = [names, users, ts, keys, [c or None for c in channels], properties]
        table = self._pa.Table.from_arrays(
            [self._pa.array(c, type=f.type) for c, f in zip(columns, self.schema, strict=True)],
            schema=self.schema,
        )
        self._writer.write_table(table)
        self._pending = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
