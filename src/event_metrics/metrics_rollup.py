"""GET /metrics on PostgreSQL from rollups: whole UTC days and hours pre-aggregated,
only the unaligned edges and the not-yet-folded events read from the raw table.

Everything is read in one REPEATABLE READ snapshot, in which the rollups hold exactly the
events up to the refresher's checkpoint, so "rollups + raw rows after the checkpoint"
counts each event once. Unique users are unions of exact sets: roaring bitmaps from the
rollups, plus the user ids of raw rows.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from pyroaring import BitMap

from event_metrics.buckets import POSTGRES_SQL, bucket_bounds, bucket_start
from event_metrics.checkpoint import AFTER, Checkpoint, after, load_checkpoint, up_to
from event_metrics.freshness import Freshness
from event_metrics.metrics import (
    MetricsQuery,
    MetricsResponse,
    SeriesRow,
    build_response,
    check_row_count,
    off_the_loop,
)
from event_metrics.metrics_postgres import postgres_answering
from event_metrics.rollup_cover import Cover
from event_metrics.schema import DAY, DIMENSIONS, HOUR, ROLLUP_TARGET, level_for

PENDING_COUNT = f"""
SELECT count(*) FROM (
    SELECT 1 FROM events WHERE {AFTER} LIMIT $3
) pending
"""
FETCH_ROLLUPS = """
SELECT {columns}
FROM rollups r
JOIN unnest($1::smallint[], $2::timestamptz[], $3::timestamptz[]) AS k(grain, lo, hi)
  ON r.grain = k.grain AND r.bucket >= k.lo AND r.bucket < k.hi
WHERE r.project_id = $5 AND r.level = $4{event_filter}
"""
_R_DIMS = ", ".join(f"r.{d}" for d in DIMENSIONS)
# A rollup row: its key (grain, bucket, every dimension's value), counts, and bitmap.
ROLLUP_COLUMNS = (
    f"r.grain, extract(epoch FROM r.bucket)::bigint, {_R_DIMS}, r.events, r.users_count, {{users}}"
)
_LEVEL_PARAM = 3 + len(DIMENSIONS)
_KEY_ARRAYS = ", ".join(f"${n}::text[]" for n in range(3, _LEVEL_PARAM))
FETCH_BITMAPS = f"""
SELECT r.grain, extract(epoch FROM r.bucket)::bigint, {_R_DIMS}, r.users
FROM rollups r
JOIN unnest($1::smallint[], $2::bigint[], {_KEY_ARRAYS})
     AS k(grain, bucket, {", ".join(DIMENSIONS)})
  ON r.grain = k.grain AND r.bucket = to_timestamp(k.bucket)
 {"".join(f" AND r.{d} = k.{d}" for d in DIMENSIONS)}
WHERE r.level = ${_LEVEL_PARAM} AND r.project_id = ${_LEVEL_PARAM + 1}
"""
USER_IDS = "SELECT user_id, uid FROM user_ids WHERE project_id = $1 AND user_id = ANY($2::text[])"

PartKey = tuple[Any, ...]  # (grain, bucket epoch, *dimension values) of a rollup row
CellKey = tuple[int, tuple[str, ...]]  # (bucket index, output dimension values)


class Part:
    """One rollup row in a cell: its key, cardinality, and bitmap once read."""

    __slots__ = ("blob", "count", "key")

    def __init__(self, key: PartKey, count: int, blob: bytes | None) -> None:
        self.key, self.count, self.blob = key, count, blob


class Cell:
    """One series row (or the total) assembled from rollup rows and raw rows."""

    # Thousands of cells per response: one list each, the user set only when needed.
    __slots__ = ("events", "parts", "raw_users")

    def __init__(self) -> None:
        self.events = 0
        self.parts: list[Part] = []
        self.raw_users: set[str] | None = None

    def add_raw(self, events: int, users: list[str]) -> None:
        self.events += events
        if self.raw_users is None:
            self.raw_users = set()
        self.raw_users.update(users)

    @property
    def needs_union(self) -> bool:
        return len(self.parts) > 1 or (bool(self.parts) and bool(self.raw_users))

    def unique_users(self, uids: dict[str, int]) -> int:
        if len(self.parts) == 1 and not self.raw_users:
            return self.parts[0].count  # one rollup row: its stored cardinality
        blobs = [part.blob for part in self.parts]
        assert None not in blobs, "bitmaps are fetched for every cell that unions"
        # One many-way union: a third faster than OR-ing 90 daily bitmaps one by one.
        users = BitMap.union(BitMap(), *(BitMap.deserialize(blob) for blob in blobs))  # type: ignore[arg-type]
        unknown = 0
        for user in self.raw_users or ():
            uid = uids.get(user)
            if uid is None:
                unknown += 1  # not folded into any rollup yet, so in no bitmap
            else:
                users.add(uid)
        return len(users) + unknown


async def fetch_metrics(
    pool: asyncpg.Pool,
    query: MetricsQuery,
    *,
    max_pending: int | None,
    timeout_s: float,
    max_rows: int,
    freshness: Freshness,
) -> MetricsResponse | None:
    """Answer from rollups, or None when the refresher lags so far that raw is cheaper;
    `freshness` gets the count of events read raw for not being folded yet."""
    with postgres_answering():
        async with asyncio.timeout(timeout_s):
            return await _fetch(pool, query, max_pending, max_rows, freshness)


async def _fetch(
    pool: asyncpg.Pool,
    query: MetricsQuery,
    max_pending: int | None,
    max_rows: int,
    freshness: Freshness,
) -> MetricsResponse | None:
    bounds = bucket_bounds(query.start, query.end, query.granularity, query.zone)
    filtered = {"event_name"} if query.event_name is not None else set()
    start = int(query.start.timestamp())
    series_cover = Cover.make(
        bounds,
        start,
        level_for({*query.group_by, *filtered}).number,
        query.group_by,
        bucketed=query.granularity != "total",
    )
    total_level = level_for(filtered).number
    total_cover = Cover.make([start, bounds[-1]], start, total_level, (), bucketed=False)
    async with (
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        cursor = await load_checkpoint(connection, ROLLUP_TARGET)
        cap = max_pending if max_pending is not None else 2**62
        pending = await connection.fetchval(PENDING_COUNT, *cursor, cap)
        if pending >= cap:
            return None
        # Counted in the answer's own snapshot: exact for this answer.
        freshness = msgspec.structs.replace(freshness, rollup_lag_rows=pending)
        series: dict[CellKey, Cell] = defaultdict(Cell)
        total: dict[CellKey, Cell] = defaultdict(Cell)
        await _add_rollups(connection, query, total_cover, total)
        await _add_pieces(connection, query, total_cover, cursor, total)
        direct: list[asyncpg.Record] = []
        if series_cover.direct:
            direct = await _direct_rows(connection, query, series_cover, max_rows)
            check_row_count(len(direct), max_rows)
        else:
            await _add_rollups(connection, query, series_cover, series)
            await _add_pieces(connection, query, series_cover, cursor, series)
        if pending:
            await _add_pending(connection, query, series_cover, cursor, series, total)
        if series_cover.direct and series:
            # Buckets that pending rows touch are assembled cell by cell instead.
            touched = sorted({index for index, _ in series})
            await _add_rollups(connection, query, series_cover.only(touched), series)
            skip = {bounds[index] for index in touched}
            direct = [row for row in direct if row[0] not in skip]
        check_row_count(len(series) + len(direct), max_rows)  # before the bitmap unions
        for cover, cells in ((series_cover, series), (total_cover, total)):
            await _add_missing_bitmaps(connection, cover, cells, query.project_id)
        raw_users = {
            u for cell in (*series.values(), *total.values()) for u in cell.raw_users or ()
        }
        uids = {}
        if raw_users:
            uids = dict(await connection.fetch(USER_IDS, query.project_id, list(raw_users)))

    def assemble() -> MetricsResponse:
        rows: list[SeriesRow] = [
            (bounds[index], *groups, cell.events, cell.unique_users(uids))
            for (index, groups), cell in series.items()
            if cell.events
        ]
        whole = total.get((0, ()), Cell())
        return build_response(
            query,
            backend="postgres",
            total=(whole.events, whole.unique_users(uids)),
            rows=itertools.chain(direct, rows),
            freshness=freshness,
        )

    return await off_the_loop(assemble, len(series) + len(direct))


async def _fetch_rollups(
    connection: asyncpg.Connection,
    query: MetricsQuery,
    cover: Cover,
    columns: str,
    *,
    limit: int | None = None,
) -> list[asyncpg.Record]:
    """`columns` of the rollup rows for the cover's whole days and hours."""
    ranges = [(DAY, lo, hi) for lo, hi in cover.days] + [(HOUR, lo, hi) for lo, hi in cover.hours]
    if not ranges:
        return []
    params: list[Any] = [
        [grain for grain, _, _ in ranges],
        [datetime.fromtimestamp(lo, UTC) for _, lo, _ in ranges],
        [datetime.fromtimestamp(hi, UTC) for _, _, hi in ranges],
        cover.level,
        query.project_id,
    ]
    event_filter = ""
    if query.event_name is not None:
        params.append(query.event_name)
        event_filter = " AND r.event_name = $6"
    sql = FETCH_ROLLUPS.format(columns=columns, event_filter=event_filter)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows: list[asyncpg.Record] = await connection.fetch(sql, *params)
    return rows


async def _direct_rows(
    connection: asyncpg.Connection, query: MetricsQuery, cover: Cover, max_rows: int
) -> list[asyncpg.Record]:
    """Series rows read straight from rollups, for a cover where each row is one cell:
    (bucket epoch, *dimension values, events, unique users), the shape build_response
    takes, so 15,000-row answers cost no per-row Python here. One row more than max_rows
    at most, enough to notice an answer too large."""
    dimensions = "".join(f"r.{d}, " for d in cover.dimensions)
    columns = f"extract(epoch FROM r.bucket)::bigint, {dimensions}r.events, r.users_count"
    return await _fetch_rollups(connection, query, cover, columns, limit=max_rows + 1)


async def _add_rollups(
    connection: asyncpg.Connection, query: MetricsQuery, cover: Cover, cells: dict[CellKey, Cell]
) -> None:
    users = "r.users" if cover.bitmaps_up_front else "NULL::bytea"
    rows = await _fetch_rollups(connection, query, cover, ROLLUP_COLUMNS.format(users=users))
    # The cell's group: the output dimensions' values, picked by name from the row's.
    picks = [DIMENSIONS.index(dimension) for dimension in cover.dimensions]
    indexes: dict[int, int] = {}  # rows of one bucket share its index
    for grain, bucket, *values, events, count, blob in rows:
        index = indexes.get(bucket)
        if index is None:
            index = indexes[bucket] = cover.index(bucket) if cover.bucketed else 0
        cell = cells[(index, tuple(values[pick] for pick in picks))]
        cell.events += events
        cell.parts.append(Part((grain, bucket, *values), count, blob))


def _raw_sql(query: MetricsQuery, cover: Cover, source: str, params: list[Any]) -> str:
    """A raw aggregate over `source` rows, grouped like the cover's cells."""
    select = ["NULL AS bucket"]
    if cover.bucketed:
        params.append(query.timezone)
        bucket = POSTGRES_SQL[query.granularity].format(tz=f"${len(params)}::text")
        select[0] = f"{bucket} AS bucket"
    params.append(query.project_id)
    where = f" AND e.project_id = ${len(params)}"
    if query.event_name is not None:
        params.append(query.event_name)
        where += f" AND e.event_name = ${len(params)}"
    select += [f"e.{d}" for d in cover.dimensions]
    keys = ", ".join(str(n) for n in range(1, len(select) + 1))
    return (
        f"SELECT {', '.join(select)}, count(*), array_agg(DISTINCT e.user_id) "
        f"FROM {source}{where} GROUP BY {keys}"
    )


def _add_raw_rows(
    query: MetricsQuery, cover: Cover, rows: list[asyncpg.Record], cells: dict[CellKey, Cell]
) -> None:
    zone = query.zone
    for bucket, *groups, events, users in rows:
        index = 0
        if cover.bucketed:
            index = cover.index(
                bucket_start(bucket, query.granularity, zone, query.start).timestamp()
            )
        cells[(index, tuple(groups))].add_raw(events, users)


async def _add_pieces(
    connection: asyncpg.Connection,
    query: MetricsQuery,
    cover: Cover,
    cursor: Checkpoint,
    cells: dict[CellKey, Cell],
) -> None:
    """Raw rows in the sub-hour edges that rollups cannot answer (folded rows only)."""
    if not cover.pieces:
        return
    params: list[Any] = [
        *cursor,
        [datetime.fromtimestamp(lo, UTC) for lo, _ in cover.pieces],
        [datetime.fromtimestamp(hi, UTC) for _, hi in cover.pieces],
    ]
    source = (
        "unnest($3::timestamptz[], $4::timestamptz[]) AS p(lo, hi) "
        "JOIN events e ON e.ts >= p.lo AND e.ts < p.hi "
        f"WHERE {up_to(1, 'e')}"
    )
    sql = _raw_sql(query, cover, source, params)
    _add_raw_rows(query, cover, await connection.fetch(sql, *params), cells)


async def _add_pending(
    connection: asyncpg.Connection,
    query: MetricsQuery,
    cover: Cover,
    cursor: Checkpoint,
    series: dict[CellKey, Cell],
    total: dict[CellKey, Cell],
) -> None:
    """Rows committed after the refresher's checkpoint: read raw, into series and total."""
    params: list[Any] = [*cursor, query.start, query.end]
    source = f"events e WHERE {after(1, 'e')} AND e.ts >= $3 AND e.ts < $4"
    sql = _raw_sql(query, cover, source, params)
    rows = await connection.fetch(sql, *params)
    _add_raw_rows(query, cover, rows, series)
    whole = total[(0, ())]
    for *_, events, users in rows:
        whole.add_raw(events, users)


async def _add_missing_bitmaps(
    connection: asyncpg.Connection, cover: Cover, cells: dict[CellKey, Cell], project_id: int
) -> None:
    """Fetch bitmaps that were not read up front, for cells that turn out to need a union."""
    missing = [
        part
        for cell in cells.values()
        if cell.needs_union
        for part in cell.parts
        if part.blob is None
    ]
    if not missing:
        return
    columns = [list(c) for c in zip(*(part.key for part in missing), strict=True)]
    found = {
        tuple(key): users
        for *key, users in await connection.fetch(FETCH_BITMAPS, *columns, cover.level, project_id)
    }
    for part in missing:
        part.blob = found[part.key]
