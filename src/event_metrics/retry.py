"""Retrying: exponential backoff with jitter, and how a failure is described.

The one retry helper: every background worker (worker.py) and the writers' retries of a
batch wait through `Backoff`, each with delays from its own settings. A library
(`tenacity`, `stamina`) retries one call; our loops retry forever, report each attempt's
state in /health and log its changes once, which is worker.LoopState's job, so what is
left for a helper is these few lines.
"""

from __future__ import annotations

import random


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
