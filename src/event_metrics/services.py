"""The running parts of the service, started and stopped in order by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from event_metrics.clickhouse import ClickHousePool
from event_metrics.metrics_service import MetricsGate
from event_metrics.postgres import create_pool
from event_metrics.queue import IngestQueue
from event_metrics.replicator import Replicator
from event_metrics.rollups import RollupRefresher
from event_metrics.settings import Settings
from event_metrics.watermark import LockedWorker
from event_metrics.writer import WriterPool, init_writer_connection

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    queue: IngestQueue
    writers: WriterPool
    query_pool: asyncpg.Pool
    metrics_gate: MetricsGate
    clickhouse: ClickHousePool | None = None
    replicator: Replicator | None = None
    refresher: RollupRefresher | None = None


@contextlib.asynccontextmanager
async def run_services(settings: Settings) -> AsyncIterator[Services]:
    """Open pools, start writers; on exit drain the writers first, then close in reverse."""
    if not settings.database_url:
        raise RuntimeError("Settings.database_url is required to run the service")
    timeout_s = settings.query_timeout_ms / 1000
    async with contextlib.AsyncExitStack() as stack:
        write_pool = await create_pool(
            settings.database_url, size=settings.writer_count, init=init_writer_connection
        )
        stack.push_async_callback(write_pool.close)
        query_pool = await create_pool(
            settings.database_url, size=settings.db_pool_size, command_timeout_s=timeout_s
        )
        stack.push_async_callback(query_pool.close)

        clickhouse = replicator = None
        if settings.clickhouse_url:
            # Clients connect lazily: the service starts even while ClickHouse is down.
            clickhouse = ClickHousePool(
                settings.clickhouse_url, size=settings.db_pool_size, timeout_s=timeout_s
            )
            stack.push_async_callback(clickhouse.close)
            if settings.replicate:
                replicator = Replicator(settings)
                _start_background(stack, replicator, "replicator")

        refresher = None
        if settings.rollups:
            refresher = RollupRefresher(settings)
            _start_background(stack, refresher, "rollup-refresher")

        queue = IngestQueue(settings.queue_max_events)
        writers = WriterPool(settings, queue, write_pool)
        writers.start()
        # Registered last, so it runs first: no events are dropped while pools close.
        stack.push_async_callback(writers.stop)
        yield Services(
            settings=settings,
            queue=queue,
            writers=writers,
            query_pool=query_pool,
            clickhouse=clickhouse,
            replicator=replicator,
            refresher=refresher,
            metrics_gate=MetricsGate(
                running=settings.metrics_max_running,
                waiting=settings.metrics_max_waiting,
                wait_s=settings.metrics_wait_ms / 1000,
            ),
        )


def _start_background(stack: contextlib.AsyncExitStack, worker: LockedWorker, name: str) -> None:
    """Run a worker as a task, stopped (with a time limit) when the stack unwinds."""
    task = asyncio.create_task(worker.run(), name=name)
    stack.push_async_callback(_stop_background, worker, task)


async def _stop_background(worker: LockedWorker, task: asyncio.Task[None]) -> None:
    worker.stop()
    try:
        await asyncio.wait_for(task, timeout=10)
    except TimeoutError:
        log.warning("%s did not stop within 10 s; cancelled", task.get_name())
