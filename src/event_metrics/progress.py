"""A progress bar on stderr for the long commands (export, import): how far, how many
events, events per second. Redrawn in place on a terminal, a few times a second; where
stderr is a file or a pipe (a log, a test), only the final line is written."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_S = 0.2


class ProgressBar:
    def __init__(self, what: str, *, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self.events = 0
        self.done = 0.0

    def update(self, done: float, events: int) -> None:
        """`done` from 0 to 1 (how far through the work), `events` so far."""
        self.done, self.events = min(max(done, 0.0), 1.0), events
        now = time.monotonic()
        if self.live and now - self._drawn_at >= REDRAW_S:
            self._drawn_at = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        filled = round(self.done * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        rate = self.events / elapsed
        eta = ""
        if 0 < self.done < 1:
            eta = f"  ETA {elapsed * (1 - self.done) / self.done:.0f} s"
        return (
            f"{self.what} [{bar}] {self.done:4.0%}  {self.events:,} events  "
            f"{rate:,.0f} events/s  {elapsed:.1f} s{eta}"
        )

    def finish(self) -> None:
        """The last state, on a line of its own."""
        self.stream.write(("\r" if self.live else "") + self.line() + "\n")
        self.stream.flush()
