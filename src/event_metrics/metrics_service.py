"""GET /metrics as a service: admission, engine choice, and the rollup -> raw fallback.

Expensive reads must not starve ingest, which shares the process and the database: at
most `METRICS_MAX_RUNNING` answers are computed at once per process and at most
`METRICS_MAX_WAITING` wait for a turn (for at most `METRICS_WAIT_MS`); anything beyond
gets a quick 503 with Retry-After. Answers are bounded too: more than
`MAX_SERIES_ROWS` rows is a 400 asking for a narrower question.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg

from event_metrics import metrics_clickhouse, metrics_postgres, metrics_rollup, telemetry
from event_metrics.clickhouse import ClickHousePool
from event_metrics.freshness import behind, complete
from event_metrics.metrics import InvalidParameter, MetricsQuery, MetricsResponse
from event_metrics.settings import Settings
from event_metrics.worker import StatusSource

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


class MetricsService:
    """Answers /metrics queries: admission through the gate, then the chosen engine; each
    answer says how fresh its source is, from what the followers last measured (no query
    of its own)."""

    def __init__(
        self,
        settings: Settings,
        *,
        query_pool: asyncpg.Pool,
        clickhouse: ClickHousePool | None,
        replication: StatusSource | None = None,
        rollups: StatusSource | None = None,
    ) -> None:
        self.settings = settings
        self.query_pool = query_pool
        self.clickhouse = clickhouse
        self.replication = replication
        self.rollups = rollups
        limits = settings.metrics
        self.gate = MetricsGate(
            running=limits.max_running, waiting=limits.max_waiting, wait_s=limits.wait_s
        )

    async def answer(
        self, query: MetricsQuery, *, backend: str | None, plan: Plan | None
    ) -> tuple[MetricsResponse, str]:
        """The answer from the chosen engine, and the plan that produced it."""
        async with self.gate.turn():
            started = time.monotonic()
            chosen = backend or self.settings.backend
            answer, used = await self._answer(query, chosen, plan or "auto")
            telemetry.QUERY_SECONDS.labels(chosen, used).observe(time.monotonic() - started)
            return answer, used

    async def _answer(
        self, query: MetricsQuery, backend: str, plan: Plan
    ) -> tuple[MetricsResponse, str]:
        settings = self.settings
        timeout_s = settings.metrics.query_timeout_s
        max_rows = settings.metrics.max_series_rows
        if backend == "clickhouse":
            if self.clickhouse is None:
                raise InvalidParameter(
                    "backend", "ClickHouse is not configured (set EVENT_METRICS_CLICKHOUSE_URL)"
                )
            # Read before the query: ClickHouse holds at least what was copied by then.
            replicated = behind("clickhouse", self._status(self.replication))
            answer = await metrics_clickhouse.fetch_metrics(
                self.clickhouse, query, max_rows, replicated
            )
            return answer, "clickhouse"
        if settings.rollups.enabled and plan != "raw":
            # Exact either way; rollups are cheaper unless the refresher lags far behind.
            limit = settings.rollups.max_pending_rows if plan == "auto" else None
            rollup_state = (self._status(self.rollups) or {}).get("state")
            from_rollups = await metrics_rollup.fetch_metrics(
                self.query_pool,
                query,
                max_pending=limit,
                timeout_s=timeout_s,
                max_rows=max_rows,
                freshness=complete("rollup", state=rollup_state),
            )
            if from_rollups is not None:
                return from_rollups, "rollup"
        raw = await metrics_postgres.fetch_metrics(
            self.query_pool,
            query,
            timeout_s=timeout_s,
            max_rows=max_rows,
            freshness=complete("raw"),
        )
        return raw, "raw"

    @staticmethod
    def _status(source: StatusSource | None) -> dict[str, Any] | None:
        return None if source is None else source.status()
