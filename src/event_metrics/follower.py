"""A follower of the events table: a worker (worker.py) that reads the rows committed after
its checkpoint (checkpoint.py) while it holds a PostgreSQL advisory lock, the ClickHouse
replicator and the rollup refresher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from event_metrics import lag
from event_metrics.checkpoint import load_checkpoint
from event_metrics.postgres import TRANSIENT_ERRORS
from event_metrics.retry import Backoff, describe
from event_metrics.settings import LagSettings
from event_metrics.worker import Worker

log = logging.getLogger(__name__)

# A lag measurement takes milliseconds (docs/benchmarks.md); one this slow has hung.
MEASURE_TIMEOUT_S = 10.0


class Follower(Worker):
    """A background loop that works only while it holds a PostgreSQL advisory lock.

    Several service processes may run one each; the lock makes one of them active and
    the others wait in "standby". Losing the connection releases the lock, so another
    process takes over from the saved checkpoint. Any failure, an outage or a server
    error, is retried with backoff and reported as state "failing": the loop only ends
    when it is stopped.

    Beside the loop, on a connection of its own, the lag is measured every
    `LAG_INTERVAL_MS` whatever the loop is doing (copying a backlog, waiting for the
    lock, failing, retrying), and at once after a cycle that caught up.

    States: "starting" until the first cycle completes; "catching_up" after a cycle that
    found a full batch (more was waiting), or while a measurement taken since the cycle
    began counts a full batch or more waiting; "running" after a cycle that found less
    than a full batch (it took everything committed), unless such a measurement says
    otherwise; "standby", "failing", "stopped".
    """

    lock_id: int
    name: str
    target: str  # its checkpoint row in replication_state

    def __init__(
        self,
        database_url: str,
        *,
        interval_s: float,
        retry_max_s: float,
        batch_rows: int,
        lag_settings: LagSettings,
    ) -> None:
        super().__init__(self.name, log, retry_initial_s=0.1, retry_max_s=retry_max_s)
        self.database_url = database_url
        self.interval_s = interval_s
        self.batch_rows = batch_rows  # a cycle that finds this many may have left some
        self.lag_settings = lag_settings
        self.lag: lag.Lag | None = None  # None until the first measurement
        self.progress = lag.Progress()
        self.rows_done = 0
        self.measured = asyncio.Event()  # set by each measurement (the child reports it)
        self._measure_now = asyncio.Event()

    def status(self) -> dict[str, Any]:
        """What /health reports: the state, and the lag (rows after the checkpoint, the
        oldest's age, how long ago it was measured); lag fields are null until the first
        measurement."""
        measured = self.lag
        state = self.state
        eta = self.progress.eta_seconds() if state == "catching_up" else None
        return {
            "state": state,
            "lag_rows": None if measured is None else measured.rows,
            "lag_rows_capped": measured is not None and measured.capped,
            "lag_seconds": None if measured is None else round(measured.seconds, 3),
            "lag_age_s": None if measured is None else round(time.time() - measured.measured_at, 3),
            "rows_per_second": round(self.progress.rows_per_second(), 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "last_error": self.last_error,
        }

    async def measure_lag(self, connection: asyncpg.Connection) -> None:
        checkpoint = await load_checkpoint(connection, self.target)
        exact_rows = self.lag_settings.exact_rows
        self.record_lag(await lag.measure(connection, checkpoint, exact_rows=exact_rows))

    def record_lag(self, measured: lag.Lag) -> None:
        """Keep a measurement; a full batch waiting means catching up, at once."""
        self.lag = measured
        self.progress.add(measured, self.rows_done)
        if measured.rows >= self.batch_rows and self.state == "running":
            self.loop_state.set("catching_up")  # a burst arrived since the last cycle
        self.measured.set()

    def finish_cycle(self, rows: int, started: float) -> None:
        """Count a cycle that succeeded (begun at time.time() `started`), and say whether
        the loop is caught up."""
        self.rows_done += rows
        measured = self.lag
        behind = rows >= self.batch_rows or (
            measured is not None
            and measured.measured_at >= started
            and measured.rows >= self.batch_rows
        )
        self.loop_state.set("catching_up" if behind else "running")
        if not behind:
            self._measure_now.set()  # show the lag it leaves now, not a second later

    async def run(self) -> None:
        """Work until stopped, retrying through every failure; measure the lag meanwhile."""
        monitor = asyncio.create_task(self._monitor_lag(), name=f"{self.name} lag")
        try:
            await super().run()
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def cycle(self) -> float:
        """One session: connect, wait for the lock, work on it until stopped."""
        connection = await asyncpg.connect(self.database_url, timeout=10)
        try:
            if await self._wait_for_lock(connection):
                # Running, or catching up, once a cycle has said which; a failing loop
                # stays failing until then.
                if self.loop_state.state == "standby":
                    self.loop_state.set("starting")
                await self.work(connection)
        finally:
            await connection.close()  # releases the advisory lock
        return 0.0

    def failed(self, error: Exception) -> None:
        self._measure_now.set()  # the lag it leaves behind, without waiting
        if not isinstance(error, TRANSIENT_ERRORS):
            log.debug("%s failure", self.name, exc_info=error)

    async def _monitor_lag(self) -> None:
        """Measure the lag every LAG_INTERVAL_MS (and when a cycle asks), on a connection
        of its own; while PostgreSQL is unreachable the last measurement stays, with its
        age in /health."""
        backoff = Backoff(initial_s=0.1, max_s=self.retry_max_s)
        failed = False
        while not self.stopping:
            try:
                # A hung statement must not freeze the figure: it fails, and is retried.
                connection = await asyncpg.connect(
                    self.database_url, timeout=10, command_timeout=MEASURE_TIMEOUT_S
                )
                try:
                    while not self.stopping:
                        self._measure_now.clear()
                        await self.measure_lag(connection)
                        if failed:
                            log.info("%s measures its lag again", self.name)
                            failed = False
                        backoff.reset()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._measure_now.wait(), self.lag_settings.interval_s
                            )
                finally:
                    await connection.close()
            except Exception as exc:
                if not failed:  # once; the loop itself reports the outage as failing
                    log.warning("%s cannot measure its lag: %s", self.name, describe(exc))
                    failed = True
                await self.sleep(backoff.next_delay())

    async def _wait_for_lock(self, connection: asyncpg.Connection) -> bool:
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_id):
            self.loop_state.set("standby")  # another process is the active one
            if await self.sleep(self.interval_s):
                return False
        return True

    async def work(self, connection: asyncpg.Connection) -> None:
        """Run cycles on the lock-holding connection until stopped (sleep() says when);
        call finish_cycle() and reset `backoff` after each cycle that succeeds."""
        raise NotImplementedError
