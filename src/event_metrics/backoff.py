"""Retrying: exponential backoff with jitter, and the state a background loop reports.

Every loop that can fail (writers, the replicator, the rollup refresher) retries through
`Backoff` and reports through `LoopState`, which logs a change of state once, not every
attempt, and is what /health shows. A loop that hangs instead of failing (a commit that
never returns) is seen by a `StallWatch`, which logs the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from event_metrics import telemetry


class Backoff:
    """Delays that double from initial_s up to max_s, each jittered to 50-150%."""

    def __init__(self, *, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay * (0.5 + random.random())

    def reset(self) -> None:
        self._next = self.initial_s


def describe(error: BaseException) -> str:
    """`Type: message`, the form /health and the logs show (never a request body)."""
    message = " ".join(str(error).split())  # ClickHouse puts the reason on a second line
    return f"{type(error).__name__}: {message[:300]}" if message else type(error).__name__


class StatusSource:
    """What /health shows of a background loop, wherever the loop runs (a task here, or
    the replicator's own process)."""

    def status(self) -> dict[str, Any]:
        raise NotImplementedError


# A follower moves between these as often as every cycle under heavy ingest: logged at
# debug level, so that the log shows changes an operator acts on.
CAUGHT_UP_OR_NOT = {"running", "catching_up"}


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
