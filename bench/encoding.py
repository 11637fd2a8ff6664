"""Encoders for bench.dataset chunks: PostgreSQL binary COPY rows and ClickHouse columns.

No Python loop per row: every field is built as a byte matrix, and variable-length fields
are left-aligned in a fixed-width matrix whose padding a boolean mask drops again.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import numpy.typing as npt

from bench.dataset import (
    CHANNELS,
    EVENTS,
    I64,
    KEY_DIGITS,
    PROPERTIES_WIDTH,
    U8,
    USER_ID_DIGITS,
    Chunk,
    DatasetSpec,
    digits,
)
from event_metrics.schema import MIRRORED_COLUMNS

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"
# The binary COPY rows carry these columns in this order (id included: COPY writes given
# identity values, like OVERRIDING SYSTEM VALUE).
PG_COLUMNS = (
    "project_id", "id", "idempotency_key", "event_name", "user_id", "channel", "ts",
    "received_at", "properties",
)  # fmt: skip


def _text_table(values: list[bytes], prefix_len: bool) -> tuple[U8, I64]:
    """Left-aligned byte matrix of `values` (with a big-endian int32 length first)."""
    width = max(len(v) for v in values) + (4 if prefix_len else 0)
    table = np.zeros((len(values), width), dtype=np.uint8)
    lengths = np.zeros(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        raw = (len(value).to_bytes(4, "big") if prefix_len else b"") + value
        table[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        lengths[i] = len(raw)
    return table, lengths


EVENT_TABLE = _text_table([name.encode() for name, _ in EVENTS], prefix_len=True)
CHANNEL_TABLE = _text_table([name.encode() for name, _ in CHANNELS], prefix_len=True)
EVENT_BYTES = np.array([name.encode() for name, _ in EVENTS])  # dtype S<longest>
CHANNEL_BYTES = np.array([name.encode() for name, _ in CHANNELS])


class Encoder:
    """Turns chunks into PostgreSQL COPY bytes and ClickHouse columns; ids follow id_base."""

    def __init__(self, spec: DatasetSpec, id_base: int, project_id: int = 1) -> None:
        self.project_id = project_id
        self.key_prefix = f"seed-{spec.seed}-".encode()
        self.key_digits = max(KEY_DIGITS, len(str(spec.rows)))
        self.id_base = id_base

    @cached_property
    def key_width(self) -> int:
        return len(self.key_prefix) + self.key_digits

    def keys(self, chunk: Chunk) -> U8:
        rows = chunk.first_row + np.arange(len(chunk), dtype=np.int64)
        prefix = np.frombuffer(self.key_prefix, dtype=np.uint8)
        out = np.empty((len(chunk), self.key_width), dtype=np.uint8)
        out[:, : len(prefix)] = prefix
        out[:, len(prefix) :] = digits(rows, self.key_digits)
        return out

    def ids(self, chunk: Chunk) -> I64:
        return self.id_base + chunk.first_row + 1 + np.arange(len(chunk), dtype=np.int64)

    @staticmethod
    def user_ids(chunk: Chunk) -> U8:
        out = np.empty((len(chunk), 1 + USER_ID_DIGITS), dtype=np.uint8)
        out[:, 0] = ord("u")
        out[:, 1:] = digits(chunk.user, USER_ID_DIGITS)
        return out

    def copy_rows(self, chunk: Chunk) -> bytes:
        """The chunk as binary COPY tuples in PG_COLUMNS order (no header or trailer)."""
        n = len(chunk)

        def fixed(payload: U8) -> U8:
            prefix = np.frombuffer(payload.shape[1].to_bytes(4, "big"), dtype=np.uint8)
            return np.hstack([np.broadcast_to(prefix, (n, 4)), payload])

        def big_endian(values: I64) -> U8:
            return values.astype(">i8").view(np.uint8).reshape(n, 8)

        project = np.frombuffer(self.project_id.to_bytes(4, "big"), dtype=np.uint8)

        timestamp = fixed(big_endian(chunk.ts_us - PG_EPOCH_US))
        # jsonb binary format: a version byte (1), then the JSON text.
        has_props = chunk.properties_len >= 0
        props = np.zeros((n, 5 + PROPERTIES_WIDTH), dtype=np.uint8)
        props[:, :4] = chunk.properties_len.astype(">i4").view(np.uint8).reshape(n, 4)
        props[has_props, :4] = (
            (chunk.properties_len[has_props] + 1).astype(">i4").view(np.uint8).reshape(-1, 4)
        )
        props[:, 4] = 1
        props[:, 5:] = chunk.properties
        props_len = np.where(has_props, 5 + chunk.properties_len, 4)

        parts: list[tuple[U8, I64 | None]] = [
            (np.broadcast_to(np.array([0, len(PG_COLUMNS)], dtype=np.uint8), (n, 2)), None),
            (fixed(np.broadcast_to(project, (n, 4))), None),
            (fixed(big_endian(self.ids(chunk))), None),
            (fixed(self.keys(chunk)), None),
            (EVENT_TABLE[0][chunk.event], EVENT_TABLE[1][chunk.event]),
            (fixed(self.user_ids(chunk)), None),
            (CHANNEL_TABLE[0][chunk.channel], CHANNEL_TABLE[1][chunk.channel]),
            (timestamp, None),
            (timestamp, None),  # received_at = ts
            (props, props_len),
        ]
        return _ragged_rows(parts, n)

    def clickhouse_columns(self, chunk: Chunk) -> list[npt.NDArray[np.generic]]:
        """Columns in schema.MIRRORED_COLUMNS order, for use_numpy inserts."""
        seconds = (chunk.ts_us // 1_000_000).astype(np.uint32)  # floored, by design
        named = {
            "project_id": np.full(len(chunk), self.project_id, dtype=np.uint32),
            "id": self.ids(chunk).astype(np.uint64),
            "idempotency_key": self.keys(chunk).view(f"S{self.key_width}").ravel(),
            "event_name": EVENT_BYTES[chunk.event],
            "user_id": self.user_ids(chunk).view(f"S{1 + USER_ID_DIGITS}").ravel(),
            "channel": CHANNEL_BYTES[chunk.channel],
            "ts": seconds,
            "received_at": seconds,
            # NULL properties are all-zero rows, which become b'' like the replicator's ''.
            "properties": np.ascontiguousarray(chunk.properties)
            .view(f"S{PROPERTIES_WIDTH}")
            .ravel(),
        }
        return [named[name] for name in MIRRORED_COLUMNS]


def _ragged_rows(parts: list[tuple[U8, I64 | None]], n: int) -> bytes:
    # Row-major boolean indexing keeps, row by row, each part's first `length` bytes: the
    # concatenation of variable-length fields, without a Python loop per row.
    matrix = np.hstack([part for part, _ in parts])
    mask = np.hstack(
        [
            np.ones(part.shape, dtype=bool)
            if length is None
            else np.arange(part.shape[1]) < length[:, None]
            for part, length in parts
        ]
    )
    selected: U8 = matrix[mask]
    return selected.tobytes()
