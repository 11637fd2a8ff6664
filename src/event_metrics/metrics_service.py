"""GET /metrics as a service: admission, engine choice, and the rollup -> raw fallback.

Expensive reads must not starve ingest, which shares the process and the database: at
most `metrics_max_running` answers are computed at once per process and at most
`metrics_max_waiting` wait for a turn (for at most `metrics_wait_ms`); anything beyond
gets a quick 503 with Retry-After. Answers are bounded too: more than
`max_series_rows` rows is a 400 asking for a narrower question.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg

from event_metrics import metrics_clickhouse, metrics_postgres, metrics_rollup
from event_metrics.clickhouse import ClickHousePool
from event_metrics.metrics import InvalidParameter, MetricsQuery, MetricsResponse
from event_metrics.settings import Settings

Plan = Literal["auto", "raw", "rollup"]


class MetricsBusy(Exception):
    """Too many /metrics requests are being answered or waiting; retry later."""


class MetricsGate:
    """Bounds the /metrics answers computed at once and the requests waiting for one."""

    def __init__(self, *, running: int, waiting: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(running)
        self._max_waiting = waiting
        self._waiting = 0
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise MetricsBusy("too many /metrics requests at once; retry shortly")
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise MetricsBusy("no /metrics capacity became free in time; retry shortly") from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


async def answer(
    query: MetricsQuery,
    *,
    settings: Settings,
    backend: str,
    plan: Plan,
    query_pool: asyncpg.Pool,
    clickhouse: ClickHousePool | None,
) -> tuple[MetricsResponse, str]:
    """The answer from the chosen engine, and the plan that produced it."""
    timeout_s = settings.query_timeout_ms / 1000
    max_rows = settings.max_series_rows
    if backend == "clickhouse":
        if clickhouse is None:
            raise InvalidParameter(
                "backend", "ClickHouse is not configured (set EVENT_METRICS_CLICKHOUSE_URL)"
            )
        return await metrics_clickhouse.fetch_metrics(clickhouse, query, max_rows), "clickhouse"
    if settings.rollups and plan != "raw":
        # Exact either way; rollups are cheaper unless the refresher lags far behind.
        limit = settings.rollup_max_pending_rows if plan == "auto" else None
        from_rollups = await metrics_rollup.fetch_metrics(
            query_pool, query, max_pending=limit, timeout_s=timeout_s, max_rows=max_rows
        )
        if from_rollups is not None:
            return from_rollups, "rollup"
    raw = await metrics_postgres.fetch_metrics(
        query_pool, query, timeout_s=timeout_s, max_rows=max_rows
    )
    return raw, "raw"
