"""How far a follower of the events table (the replicator, the rollup refresher) is behind.

A measurement counts the rows after the follower's checkpoint exactly, through the
(txid, id) index, up to `LAG_EXACT_ROWS`; beyond that it estimates them from the id range
(`max(id)` minus the checkpoint's id, one index probe) and says so (`capped`). Counting
exactly costs about a microsecond per row (docs/architecture.md measures it), so an exact
count of a 20M-row backlog every second would keep a core busy; the estimate costs the
same on any backlog. The age is that of the oldest row among those counted: rows go in
(txid, id) order, so the oldest waiting row is among the first ones.

`Progress` keeps the last few seconds of measurements, for the rate of work and the time
until the lag reaches zero.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import asyncpg

from event_metrics.checkpoint import AFTER, Checkpoint

# The rows after a checkpoint (at most $3), the oldest one's receipt time, and for the
# estimate beyond $3: the highest id counted and the highest id in the table.
PENDING = f"""
SELECT count(*), min(received_at), max(id), (SELECT max(id) FROM events) FROM (
    SELECT received_at, id FROM events
    WHERE {AFTER}
    ORDER BY txid, id
    LIMIT $3
) pending
"""
# Seconds of measurements that the rate and the time to catch up are computed over.
PROGRESS_WINDOW_S = 10.0


@dataclass(frozen=True)
class Lag:
    """One measurement: rows after the checkpoint, whether `rows` is an estimate beyond
    the exact count, the oldest waiting row's age, and the time.time() it describes."""

    rows: int
    capped: bool
    seconds: float
    measured_at: float


async def measure(
    connection: asyncpg.Connection, checkpoint: Checkpoint, *, exact_rows: int
) -> Lag:
    """Rows after `checkpoint`: counted up to `exact_rows`, estimated beyond."""
    now = time.time()  # the statement's snapshot is taken after this: the lag as of now
    count, oldest, counted_id, max_id = await connection.fetchrow(PENDING, *checkpoint, exact_rows)
    seconds = 0.0 if oldest is None else max(0.0, now - oldest.timestamp())
    if count < exact_rows:
        return Lag(count, False, seconds, now)
    # Ids are dense and rise with the transactions that take them, so the rows not counted
    # are about the ids above the highest one counted (fewer, by the ids that duplicates
    # and rolled-back inserts used up; a bulk load's checkpoint id says nothing, so the
    # estimate starts from what was counted rather than from the checkpoint).
    return Lag(count + max(0, max_id - counted_id), True, seconds, now)


class Progress:
    """Measurements of the last PROGRESS_WINDOW_S, each with the rows done by then."""

    def __init__(self, window_s: float = PROGRESS_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[Lag, int]] = collections.deque()

    def add(self, lag: Lag, done: int) -> None:
        self._samples.append((lag, done))
        while self._samples and lag.measured_at - self._samples[0][0].measured_at > self.window_s:
            self._samples.popleft()

    def rows_per_second(self) -> float:
        """Rows done per second over the window (this process's work only)."""
        span = self._span()
        if span is None:
            return 0.0
        (first, first_done), (last, last_done) = span
        return (last_done - first_done) / (last.measured_at - first.measured_at)

    def eta_seconds(self) -> float | None:
        """Seconds until the lag reaches zero at the rate it fell over the window (rows
        done minus rows arriving); None when it did not fall."""
        span = self._span()
        if span is None:
            return None
        (first, _), (last, _) = span
        falling = (first.rows - last.rows) / (last.measured_at - first.measured_at)
        return last.rows / falling if falling > 0 else None

    def _span(self) -> tuple[tuple[Lag, int], tuple[Lag, int]] | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        if last[0].measured_at - first[0].measured_at <= 0:
            return None
        return first, last
