"""GET /metrics answered by ClickHouse, from the replicated events table."""

from __future__ import annotations

import asyncio
from typing import Any

from clickhouse_driver import errors as ch_errors

from event_metrics.buckets import CLICKHOUSE_SQL
from event_metrics.clickhouse import UNREACHABLE_ERRORS, ClickHousePool
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

# FINAL: replication is at-least-once, and FINAL counts each idempotency key once even
# before ReplacingMergeTree has merged the repeats away. uniqExact is COUNT(DISTINCT).
AGGREGATES = "count() AS events, uniqExact(user_id) AS unique_users"
WINDOW = (
    "project_id = %(project_id)s "
    "AND ts >= toDateTime(%(start)s, 'UTC') AND ts < toDateTime(%(end)s, 'UTC')"
)

Statement = tuple[str, dict[str, Any]]
UNKNOWN_TABLE = 60  # ClickHouse error code


def build_sql(query: MetricsQuery, max_rows: int | None = None) -> tuple[Statement, Statement]:
    """The series and total statements with their (client-side substituted) parameters;
    the series asks for one row more than max_rows, so an answer too large is noticed."""
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
    total = f"SELECT {AGGREGATES} FROM events FINAL WHERE {where}"

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
    series = (
        f"SELECT {', '.join(select)}, {AGGREGATES} FROM events FINAL WHERE {where}{group}{limit}"
    )
    return (series, params), (total, params)


async def fetch_metrics(
    pool: ClickHousePool, query: MetricsQuery, max_rows: int, freshness: Freshness
) -> MetricsResponse:
    """Run the series and the total concurrently on two clients; `freshness` is the
    replicator's last measurement, taken before the queries run."""
    series_statement, total_statement = build_sql(query, max_rows)
    try:
        if query.granularity == "total" and not query.group_by:
            series = totals = await pool.execute(*series_statement)
        else:
            series, totals = await asyncio.gather(
                pool.execute(*series_statement), pool.execute(*total_statement)
            )
    except UNREACHABLE_ERRORS as exc:
        raise BackendUnavailable(f"ClickHouse did not answer: {exc}") from exc
    except ch_errors.ServerException as exc:
        if exc.code != UNKNOWN_TABLE:
            raise
        raise BackendUnavailable(
            "ClickHouse has no events table yet: the replicator creates it when it first runs"
        ) from exc
    check_row_count(len(series), max_rows)
    total = (totals[0][-2], totals[0][-1]) if totals else (0, 0)
    rows = [row for row in series if row[-2]]
    return await off_the_loop(
        lambda: build_response(
            query, backend="clickhouse", total=total, rows=rows, freshness=freshness
        ),
        len(rows),
    )
