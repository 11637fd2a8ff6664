"""The running parts of the service, started and stopped in order by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from event_metrics import telemetry
from event_metrics.auth import KeyStore
from event_metrics.clickhouse import ClickHousePool
from event_metrics.export import Exporter
from event_metrics.ingest import Ingestor
from event_metrics.metrics_service import MetricsService
from event_metrics.postgres import create_pool
from event_metrics.queue import IngestQueue
from event_metrics.replicator import Replicator
from event_metrics.replicator_process import STATUS_FILE_VARIABLE, ReplicatorStatus
from event_metrics.retry import describe
from event_metrics.rollups import RollupRefresher
from event_metrics.settings import Settings, TelemetrySettings
from event_metrics.worker import StatusSource, Worker
from event_metrics.writer import WriterPool, init_writer_connection

log = logging.getLogger(__name__)


class Health(msgspec.Struct, omit_defaults=True):
    """What GET /health answers (openapi_examples.HEALTH_RESPONSES shows whole examples)."""

    status: Literal["ok", "degraded", "unavailable"]
    postgres: Annotated[str, msgspec.Meta(examples=["ok (0.6 ms)", "unavailable: TimeoutError"])]
    queue_depth: int
    queue_capacity: int
    oldest_queued_age_s: float
    rows_written: int
    writers: dict[str, Any]
    keys: dict[str, Any]
    # By protocol, since the process started.
    rejected_events: Annotated[
        dict[str, int], msgspec.Meta(examples=[{"native": 0, "segment": 1, "posthog": 0}])
    ]
    replication: dict[str, Any] | None = None
    rollups: dict[str, Any] | None = None
    # The worker that keeps this process's Prometheus gauges current (when enabled).
    telemetry: dict[str, Any] | None = None


class Gauges(Worker):
    """Keeps this process's gauges current, for scrapes that another process answers."""

    def __init__(self, read: Callable[[], telemetry.Readings], settings: TelemetrySettings) -> None:
        super().__init__(
            "telemetry", log, retry_initial_s=settings.gauge_interval_s,
            retry_max_s=settings.retry_max_s,
        )  # fmt: skip
        self.read = read
        self.interval_s = settings.gauge_interval_s

    async def cycle(self) -> float:
        telemetry.refresh(self.read())
        self.loop_state.set("running")
        return self.interval_s


@dataclass
class Services:
    settings: Settings
    queue: IngestQueue
    writers: WriterPool
    query_pool: asyncpg.Pool
    ingestor: Ingestor
    metrics: MetricsService
    keys: KeyStore
    exporter: Exporter
    clickhouse: ClickHousePool | None = None
    replicator: StatusSource | None = None
    refresher: RollupRefresher | None = None
    gauges: Gauges | None = None

    def readings(self) -> telemetry.Readings:
        """What the Prometheus gauges show: the queue, and each loop's status."""
        loops: dict[str, dict[str, Any]] = {
            "writers": self.writers.status(),
            "key_cache": self.keys.status(),
        }
        if self.replicator is not None:
            loops["replicator"] = self.replicator.status()
        if self.refresher is not None:
            loops["rollup_refresher"] = self.refresher.status()
        queue = self.queue
        return telemetry.Readings(queue.depth, queue.max_events, queue.oldest_age_s(), loops)

    async def health(self) -> Health:
        """Unavailable when events cannot be acknowledged; degraded when only a follower
        of the events table (replicator, rollup refresher) is failing. A follower that is
        catching up is ok: everything works, and its own state and lag say how far behind
        it is (docs/operations.md)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(2), self.query_pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
            postgres = f"ok ({(time.monotonic() - started) * 1000:.1f} ms)"
        except Exception as exc:  # any failure to answer means unavailable
            postgres = f"unavailable: {describe(exc)}"
        writers = self.writers.status()
        replication = self.replicator.status() if self.replicator else None
        rollups = self.refresher.status() if self.refresher else None
        status: Literal["ok", "degraded", "unavailable"] = "ok"
        if not postgres.startswith("ok") or writers["state"] != "running":
            status = "unavailable"
        elif any(part and part["state"] == "failing" for part in (replication, rollups)):
            status = "degraded"
        return Health(
            status=status,
            postgres=postgres,
            queue_depth=self.queue.depth,
            queue_capacity=self.queue.max_events,
            oldest_queued_age_s=round(self.queue.oldest_age_s(), 3),
            rows_written=self.writers.rows_written,
            writers=writers,
            keys=self.keys.status(),
            rejected_events=dict(self.ingestor.rejected),
            replication=replication,
            rollups=rollups,
            telemetry=self.gauges.status() if self.gauges else None,
        )


@contextlib.asynccontextmanager
async def run_services(settings: Settings) -> AsyncIterator[Services]:
    """Open pools, start writers; on exit drain the writers first, then close in reverse."""
    if not settings.database_url:
        raise RuntimeError("Settings.database_url is required to run the service")
    metrics = settings.metrics
    async with contextlib.AsyncExitStack() as stack:
        write_pool = await create_pool(
            settings.database_url, size=settings.writer.count, init=init_writer_connection
        )
        stack.push_async_callback(write_pool.close)
        query_pool = await create_pool(
            settings.database_url, size=metrics.pool_size, command_timeout_s=metrics.query_timeout_s
        )
        stack.push_async_callback(query_pool.close)

        clickhouse = None
        replicator: StatusSource | None = None
        if settings.clickhouse_url:
            # Clients connect lazily: the service starts even while ClickHouse is down.
            clickhouse = ClickHousePool(
                settings.clickhouse_url, size=metrics.pool_size, timeout_s=metrics.query_timeout_s
            )
            stack.push_async_callback(clickhouse.close)
            status_file = os.environ.get(STATUS_FILE_VARIABLE)
            if settings.replication.enabled and status_file:
                replicator = ReplicatorStatus(Path(status_file))  # serve runs it beside us
            elif settings.replication.enabled:
                replicator = Replicator(
                    settings.database_url,
                    settings.clickhouse_url,
                    settings.replication,
                    lag=settings.lag,
                    cluster=settings.clickhouse_cluster,
                )
                _start(stack, replicator)

        refresher = None
        if settings.rollups.enabled:
            refresher = RollupRefresher(settings.database_url, settings.rollups, lag=settings.lag)
            _start(stack, refresher)

        keys = KeyStore(
            settings.database_url,
            refresh_s=settings.access.key_refresh_s,
            retry_max_s=settings.access.key_retry_max_s,
        )
        _start(stack, keys)

        queue = IngestQueue(settings.ingest.queue_max_events)
        writers = WriterPool(settings.writer, queue, write_pool)
        # Registered last of the parts that hold events, so it stops first: no events are
        # dropped while pools close.
        _start(stack, writers)
        services = Services(
            settings=settings,
            queue=queue,
            writers=writers,
            query_pool=query_pool,
            clickhouse=clickhouse,
            replicator=replicator,
            refresher=refresher,
            ingestor=Ingestor(
                settings.ingest,
                queue,
                rate_limit_events_per_s=settings.access.rate_limit_events_per_s,
            ),
            keys=keys,
            exporter=Exporter(
                settings.database_url,
                page_rows=settings.lifecycle.export_page_rows,
                max_running=settings.lifecycle.export_max_running,
            ),
            metrics=MetricsService(
                settings,
                query_pool=query_pool,
                clickhouse=clickhouse,
                replication=replicator,
                rollups=refresher,
            ),
        )
        if settings.telemetry.enabled:
            services.gauges = Gauges(services.readings, settings.telemetry)
            _start(stack, services.gauges)
        yield services


def _start(stack: contextlib.AsyncExitStack, worker: Worker | WriterPool) -> None:
    """Start a worker; it is stopped (within its time limit) when the stack unwinds."""
    worker.start()
    stack.push_async_callback(worker.stop)
