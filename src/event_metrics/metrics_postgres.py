"""GET /metrics answered by PostgreSQL, straight from the events table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg

from event_metrics.buckets import POSTGRES_SQL
from event_metrics.freshness import Freshness
from event_metrics.metrics import (
    BackendUnavailable,
    MetricsQuery,
    MetricsResponse,
    build_response,
    check_row_count,
    off_the_loop,
)
from event_metrics.postgres import TRANSIENT_ERRORS
from event_metrics.schema import DIMENSIONS

AGGREGATES = "count(*) AS events, count(DISTINCT user_id) AS unique_users"

Statement = tuple[str, list[Any]]


def build_sql(query: MetricsQuery, max_rows: int | None = None) -> tuple[Statement, Statement]:
    """The series statement and the whole-window total statement, with their parameters;
    the series asks for one row more than max_rows, so an answer too large is noticed."""
    params: list[Any] = [query.project_id, query.start, query.end]
    where = "project_id = $1 AND ts >= $2 AND ts < $3"
    if query.event_name is not None:
        params.append(query.event_name)
        where += " AND event_name = $4"
    total = (f"SELECT {AGGREGATES} FROM events WHERE {where}", list(params))

    select = ["NULL AS bucket"]
    keys: list[str] = []
    if query.granularity != "total":
        params.append(query.timezone)
        bucket = POSTGRES_SQL[query.granularity].format(tz=f"${len(params)}::text")
        select[0] = f"{bucket} AS bucket"
        keys.append("1")
    for position, dimension in enumerate(query.group_by, start=2):  # 1 is the bucket
        select.append(DIMENSIONS[DIMENSIONS.index(dimension)])  # a name from our table
        keys.append(str(position))
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    limit = f" LIMIT {int(max_rows) + 1}" if max_rows is not None and keys else ""
    series = f"SELECT {', '.join(select)}, {AGGREGATES} FROM events WHERE {where}{group}{limit}"
    return (series, params), total


@contextlib.contextmanager
def postgres_answering() -> Iterator[None]:
    """Report PostgreSQL not answering as BackendUnavailable (a 503), not a 500."""
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        raise BackendUnavailable(f"PostgreSQL did not answer: {type(exc).__name__}") from exc


async def fetch_metrics(
    pool: asyncpg.Pool,
    query: MetricsQuery,
    *,
    timeout_s: float,
    max_rows: int,
    freshness: Freshness,
) -> MetricsResponse:
    """Run the series and the total concurrently on two connections."""
    series_statement, total_statement = build_sql(query, max_rows)

    async def fetch(statement: Statement) -> list[asyncpg.Record]:
        sql, params = statement
        async with pool.acquire() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *params, timeout=timeout_s)
            return rows

    with postgres_answering():
        if query.granularity == "total" and not query.group_by:
            series = totals = await fetch(series_statement)  # one row is both
        else:
            series, totals = await asyncio.gather(fetch(series_statement), fetch(total_statement))
    check_row_count(len(series), max_rows)
    total = (totals[0]["events"], totals[0]["unique_users"])
    rows = [tuple(row) for row in series if row["events"]]
    return await off_the_loop(
        lambda: build_response(
            query, backend="postgres", total=total, rows=rows, freshness=freshness
        ),
        len(rows),
    )
