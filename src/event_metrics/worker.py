"""One shape for background work: started with the service, retried with backoff through
every failure, each change of state logged once and shown in /health, stopped within a
time limit.

`Worker` is that loop as an asyncio task: the key cache, the gauges, and the followers of
the events table (follower.py) are workers. Two parts have the same face without the
single loop: the writers (writer.WriterPool, a pool of tasks draining the queue, whose
retries of a batch wait through the same `Backoff`) and serve's supervisor of the
replicator process (a thread: serve's own process runs no event loop of ours). Each has
start(), stop(), status() and a `LoopState`. A loop that hangs instead of failing (a
commit that never returns) is seen by a `StallWatch`, which logs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from event_metrics import telemetry
from event_metrics.retry import Backoff, describe

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # how long stop() waits for a loop to end before it cancels it
# A follower moves between these as often as every cycle under heavy ingest: logged at
# debug level, so that the log shows changes an operator acts on.
CAUGHT_UP_OR_NOT = {"running", "catching_up"}


class StatusSource:
    """What /health shows of a background loop, wherever the loop runs (a task here, or
    the replicator's own process)."""

    def status(self) -> dict[str, Any]:
        raise NotImplementedError


class LoopState:
    """The state of one background loop: logged when it changes, shown in /health."""

    def __init__(self, name: str, logger: logging.Logger, state: str = "starting") -> None:
        self.name = name
        self.state = state
        self.last_error: str | None = None
        self.failures = 0  # consecutive, reset by any success
        self.changed_at = time.monotonic()
        self._log = logger
        self._logged_error: str | None = None

    def set(self, state: str) -> None:
        """A state other than failing: clears the failure streak, logs if it is new."""
        if state != self.state:
            if self.state == "failing":
                self._log.info("%s recovered after %d failures: %s", self.name, self.failures,
                               state)  # fmt: skip
            elif {self.state, state} == CAUGHT_UP_OR_NOT:
                self._log.debug("%s is %s", self.name, state)
            else:
                self._log.info("%s is %s", self.name, state)
            self.state, self.changed_at = state, time.monotonic()
        self.failures = 0
        self.last_error = self._logged_error = None

    def fail(self, error: BaseException, *, retry_in_s: float | None = None) -> None:
        """A failed attempt: logged on entering `failing` and when the error's kind changes."""
        text = describe(error)
        self.failures += 1
        telemetry.RETRIES.labels(self.name.replace(" ", "_")).inc()
        self.last_error = text
        kind = type(error).__name__
        if self.state != "failing" or self._logged_error != kind:
            retry = f"; retrying every {retry_in_s:.1f}s at most" if retry_in_s else ""
            self._log.warning("%s is failing: %s%s", self.name, text, retry)
            self._logged_error = kind
        if self.state != "failing":
            self.state, self.changed_at = "failing", time.monotonic()

    def seconds_in_state(self) -> float:
        return time.monotonic() - self.changed_at


class StallWatch:
    """Whether work in flight has waited past a threshold. The task awaiting a call that
    hangs cannot tell anyone, so this is asked from outside: by `watch`, a task of its
    own, and by /health. Each change is logged once."""

    def __init__(self, name: str, logger: logging.Logger, threshold_s: float, what: str) -> None:
        self.name = name
        self.threshold_s = threshold_s
        self.stalled = False  # as last logged
        self._log = logger
        self._what = what  # "a commit": what has been waiting

    def check(self, waited_s: float, *, running: bool) -> bool:
        """Whether `waited_s` is a stall (only while the loop is otherwise running: a
        failing loop says so itself); logs a change."""
        stalled = running and waited_s > self.threshold_s
        if stalled != self.stalled:
            self.stalled = stalled
            if stalled:
                self._log.warning("%s are stalled: %s has waited %.1f s (more than %.1f s)",
                                  self.name, self._what, waited_s, self.threshold_s)  # fmt: skip
            else:
                self._log.info("%s are no longer stalled", self.name)
        return stalled

    async def watch(self, waited_s: Callable[[], float], running: Callable[[], bool]) -> None:
        """Check often enough to log a stall within a quarter of its threshold (or 1 s)."""
        interval = min(1.0, self.threshold_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.check(waited_s(), running=running())


class Worker(StatusSource):
    """A loop of cycles until stop(): a cycle that raises is retried after a backoff
    delay (from `retry_initial_s`, doubling up to `retry_max_s`), and the loop never
    ends on an error.

    Subclasses write cycle() (one step, returning the seconds until the next; it sets the
    state it reaches), and close() for what the loop holds; `backoff` is theirs to reset
    when a long cycle makes progress.
    """

    def __init__(
        self, name: str, logger: logging.Logger, *, retry_initial_s: float, retry_max_s: float
    ) -> None:
        self.name = name
        self.retry_max_s = retry_max_s
        self.loop_state = LoopState(name, logger)
        self.backoff = Backoff(initial_s=retry_initial_s, max_s=retry_max_s)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        return {"state": self.loop_state.state, "last_error": self.loop_state.last_error}

    @property
    def state(self) -> str:
        return self.loop_state.state

    @property
    def last_error(self) -> str | None:
        return self.loop_state.last_error

    def start(self) -> None:
        """Run the loop as a task of the running event loop."""
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def run(self) -> None:
        """Run cycles until stop_soon(), retrying through every failure."""
        try:
            while not self._stopping.is_set():
                try:
                    delay = await self.cycle()
                    self.backoff.reset()
                except Exception as exc:  # never end on an error: report it and retry
                    self.loop_state.fail(exc, retry_in_s=self.retry_max_s)
                    self.failed(exc)
                    delay = self.backoff.next_delay()
                if await self.sleep(delay):
                    break
        finally:
            await self.close()
        self.loop_state.set("stopped")

    def stop_soon(self) -> None:
        """Ask the loop to end after its current step (safe in a signal handler)."""
        self._stopping.set()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the loop to end, wait for it within timeout_s, then cancel it."""
        self.stop_soon()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout_s)
        except TimeoutError:
            log.warning("%s did not stop within %.0f s; cancelled", self.name, timeout_s)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop was asked for."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def cycle(self) -> float:
        """One step of work; the seconds until the next."""
        raise NotImplementedError

    def failed(self, error: Exception) -> None:
        """Called after a failed cycle was reported (a hook for subclasses)."""

    async def close(self) -> None:
        """Release what the loop holds, once it has ended."""
