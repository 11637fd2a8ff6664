"""GET /metrics answered by ClickHouse, from the replicated events table."""

from __future__ import annotations

import asyncio
from typing import Any

from event_metrics.buckets import CLICKHOUSE_SQL
from event_metrics.clickhouse import ClickHousePool
from event_metrics.clickhouse_client import (
    ILLEGAL_FINAL,
    UNKNOWN_TABLE,
    UNREACHABLE_ERRORS,
    ServerError,
)
from event_metrics.freshness import Freshness
from event_metrics.metrics import (
    BackendUnavailable,
    MetricsQuery,
    MetricsResponse,
    build_response,
    check_row_count,
    off_the_loop,
)
from event_metrics.schema import DIMENSIONS

# FINAL only on ClickHouse 18.16's ReplacingMergeTree (clickhouse.py): a replayed block
# may be there twice, and FINAL counts each idempotency key once even before the repeats
# are merged away. Current engines store each row once (deduplication tokens): no FINAL.
# uniqExact is COUNT(DISTINCT).
AGGREGATES = "count() AS events, uniqExact(user_id) AS unique_users"
WINDOW = (
    "project_id = %(project_id)s "
    "AND ts >= toDateTime(%(start)s, 'UTC') AND ts < toDateTime(%(end)s, 'UTC')"
)

Statement = tuple[str, dict[str, Any]]
NO_EVENTS_TABLE = "ClickHouse has no events table yet: the replicator creates it when it first runs"


def build_sql(
    query: MetricsQuery, max_rows: int | None = None, *, final: bool = True
) -> tuple[Statement, Statement]:
    """The series and total statements with their (client-side substituted) parameters;
    the series asks for one row more than max_rows, so an answer too large is noticed.
    `final`: the events table is a ReplacingMergeTree (ClickHouse 18.16)."""
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "start": int(query.start.timestamp()),
        "end": int(query.end.timestamp()),
        "tz": query.timezone,
    }
    where = WINDOW
    if query.event_name is not None:
        params["event_name"] = query.event_name
        where += " AND event_name = %(event_name)s"
    source = "events FINAL" if final else "events"
    total = f"SELECT {AGGREGATES} FROM {source} WHERE {where}"

    select = ["0 AS bucket"]
    keys: list[str] = []
    if query.granularity != "total":
        select[0] = f"{CLICKHOUSE_SQL[query.granularity]} AS bucket"
        keys.append("bucket")
    for dimension in query.group_by:
        column = DIMENSIONS[DIMENSIONS.index(dimension)]  # a name from our table
        select.append(column)
        keys.append(column)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    limit = f" LIMIT {int(max_rows) + 1}" if max_rows is not None and keys else ""
    series = f"SELECT {', '.join(select)}, {AGGREGATES} FROM {source} WHERE {where}{group}{limit}"
    return (series, params), (total, params)


async def fetch_metrics(
    pool: ClickHousePool, query: MetricsQuery, max_rows: int, freshness: Freshness
) -> MetricsResponse:
    """Run the series and the total concurrently on two clients; `freshness` is the
    replicator's last measurement, taken before the queries run."""
    try:
        try:
            series, totals = await _run(pool, query, max_rows)
        except ServerError as exc:
            if exc.code != ILLEGAL_FINAL:
                raise
            # The table was converted to the exactly-once shape since its shape was read.
            pool.forget_shape()
            series, totals = await _run(pool, query, max_rows)
    except UNREACHABLE_ERRORS as exc:
        raise BackendUnavailable(f"ClickHouse did not answer: {exc}") from exc
    except ServerError as exc:
        if exc.code != UNKNOWN_TABLE:
            raise
        pool.forget_shape()  # dropped: the replicator creates it again, maybe reshaped
        raise BackendUnavailable(NO_EVENTS_TABLE) from exc
    check_row_count(len(series), max_rows)
    total = (totals[0][-2], totals[0][-1]) if totals else (0, 0)
    rows = [row for row in series if row[-2]]
    return await off_the_loop(
        lambda: build_response(
            query, backend="clickhouse", total=total, rows=rows, freshness=freshness
        ),
        len(rows),
    )


async def _run(
    pool: ClickHousePool, query: MetricsQuery, max_rows: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    final = await pool.reads_final()
    if final is None:
        raise BackendUnavailable(NO_EVENTS_TABLE)
    series_statement, total_statement = build_sql(query, max_rows, final=final)
    if query.granularity == "total" and not query.group_by:
        series = await pool.execute(*series_statement)
        return series, series
    series, totals = await asyncio.gather(
        pool.execute(*series_statement), pool.execute(*total_statement)
    )
    return series, totals
