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
from event_metrics.retry import describe
from event_metrics.schema import DIMENSIONS

# FINAL: replication is at-least-once, and FINAL counts each idempotency key once even
# before ReplacingMergeTree has merged the repeats away. uniqExact is COUNT(DISTINCT).
#
# Each statement counts per shard and sums: on a cluster (clickhouse_cluster.py) `events`
# is a Distributed table, and distributed_group_by_no_merge has every shard return its own
# groups, counted over its own rows (FINAL too is per shard, and exact: a key's repeats
# share its user, so its shard). A user lives on one shard, so the sum of the shards'
# exact unique users is the exact count, and the entry node receives a count per group and
# shard instead of every user id. (optimize_distributed_group_by_sharding_key, on newer
# engines, would not apply: the GROUP BY keys do not contain the user.) On a single node
# the setting does nothing and each sum has one term.
PER_SHARD = "count() AS shard_events, uniqExact(user_id) AS shard_users"
SUMMED = "sum(shard_events) AS events, sum(shard_users) AS unique_users"
SETTINGS = " SETTINGS distributed_group_by_no_merge = 1"
WINDOW = (
    "project_id = %(project_id)s "
    "AND ts >= toDateTime(%(start)s, 'UTC') AND ts < toDateTime(%(end)s, 'UTC')"
)

Statement = tuple[str, dict[str, Any]]
UNKNOWN_TABLE = 60  # ClickHouse error code
# A shard the entry node could not reach: NETWORK_ERROR, SOCKET_TIMEOUT,
# ALL_CONNECTION_TRIES_FAILED.
SHARD_UNREACHABLE = {210, 209, 279}


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
    total = f"SELECT {SUMMED} FROM (SELECT {PER_SHARD} FROM events FINAL WHERE {where}){SETTINGS}"

    inner: list[str] = []
    keys: list[str] = []
    if query.granularity != "total":
        inner.append(f"{CLICKHOUSE_SQL[query.granularity]} AS bucket")
        keys.append("bucket")
    for dimension in query.group_by:
        column = DIMENSIONS[DIMENSIONS.index(dimension)]  # a name from our table
        inner.append(column)
        keys.append(column)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    limit = f" LIMIT {int(max_rows) + 1}" if max_rows is not None and keys else ""
    outer = keys if query.granularity != "total" else ["0 AS bucket", *keys]
    series = (
        f"SELECT {', '.join([*outer, SUMMED])} "
        f"FROM (SELECT {', '.join([*inner, PER_SHARD])} FROM events FINAL WHERE {where}{group})"
        f"{group}{limit}{SETTINGS}"
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
        if exc.code in SHARD_UNREACHABLE:
            raise BackendUnavailable(f"a ClickHouse shard did not answer: {describe(exc)}") from exc
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
