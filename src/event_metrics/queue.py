"""The bounded in-memory queue between HTTP handlers and the database writers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from event_metrics.schema import Row


class QueueFull(Exception):
    """The queue has no room for a request's events; the client should retry later."""


class QueueClosed(Exception):
    """The service is shutting down and takes no new events."""


class Ticket:
    """One request's events on their way to the database, and the outcome for each."""

    __slots__ = ("enqueued_at", "future", "protocol", "rows")

    def __init__(
        self, rows: Sequence[Row], loop: asyncio.AbstractEventLoop, protocol: str = "native"
    ) -> None:
        self.rows = rows
        self.protocol = protocol  # what the events came in as, for the metrics
        self.enqueued_at = time.monotonic()
        # Resolved by a writer with one bool per row: True if stored, False if duplicate.
        self.future: asyncio.Future[list[bool]] = loop.create_future()

    async def outcome(self, timeout_s: float) -> list[bool]:
        """Wait for the writer's verdict; raise TimeoutError after timeout_s."""
        # One timer handle instead of asyncio.timeout + shield (a third of the per-request
        # cost of waiting). On expiry the future fails, the rows stay queued or in flight,
        # and the writer, which only resolves futures that are not done, still stores them.
        timer = self.future.get_loop().call_later(timeout_s, _expire, self.future)
        try:
            return await self.future
        finally:
            timer.cancel()


def _expire(future: asyncio.Future[list[bool]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class IngestQueue:
    """A FIFO of tickets bounded by the number of events it holds.

    A request's events go in whole or not at all, so a 503 never leaves half a request
    queued, and memory stays bounded by max_events.
    """

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._tickets: deque[Ticket] = deque()
        self._events = 0
        self._closed = False
        self._ready = asyncio.Event()

    @property
    def depth(self) -> int:
        """Events waiting for a writer."""
        return self._events

    @property
    def closed(self) -> bool:
        return self._closed

    def oldest_age_s(self) -> float:
        """Seconds the oldest waiting event has been queued, 0 when empty."""
        if not self._tickets:
            return 0.0
        return time.monotonic() - self._tickets[0].enqueued_at

    def put(self, rows: Sequence[Row], protocol: str = "native") -> Ticket:
        """Enqueue a request's rows, or raise QueueFull / QueueClosed without enqueuing any."""
        if self._closed:
            raise QueueClosed("the service is shutting down")
        if self._events + len(rows) > self.max_events:
            raise QueueFull(f"ingest queue is full ({self._events} events waiting)")
        ticket = Ticket(rows, asyncio.get_running_loop(), protocol)
        self._tickets.append(ticket)
        self._events += len(rows)
        self._ready.set()
        return ticket

    async def take(
        self, max_events: int, linger_s: float, may_start: Callable[[int], bool] | None = None
    ) -> list[Ticket]:
        """Wait for work, then gather tickets until max_events or linger_s, whichever first.

        `may_start(depth)`, when given, must also hold before tickets are taken: it is
        checked again whenever tickets arrive or wake() is called, in the same step as
        the taking, so no other taker can slip in between.
        Returns an empty list only when the queue is closed and empty.
        """
        while True:
            while not self._tickets or (may_start is not None and not may_start(self._events)):
                if self._closed and not self._tickets:
                    return []
                self._ready.clear()
                await self._ready.wait()
            deadline = time.monotonic() + linger_s
            while self._events < max_events and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), remaining)
                except TimeoutError:
                    break
            if may_start is not None and not may_start(self._events):
                continue  # another taker started while this one lingered
            # Another writer may have emptied the queue while this one lingered.
            batch = self._pop(max_events)
            if batch:
                return batch

    def wake(self) -> None:
        """Make waiting takers check their `may_start` again."""
        if self._tickets or self._closed:
            self._ready.set()

    def _pop(self, max_events: int) -> list[Ticket]:
        # Whole tickets only: a request's events commit in one transaction. The first
        # ticket is always taken, even when it alone is larger than max_events.
        batch: list[Ticket] = []
        size = 0
        while self._tickets:
            ticket = self._tickets[0]
            if batch and size + len(ticket.rows) > max_events:
                break
            self._tickets.popleft()
            batch.append(ticket)
            size += len(ticket.rows)
        self._events -= size
        if self._tickets:
            self._ready.set()  # let another writer start on the rest
        return batch

    def take_all_nowait(self) -> list[Ticket]:
        """Remove and return everything still queued (used after writers have stopped)."""
        tickets = list(self._tickets)
        self._tickets.clear()
        self._events = 0
        return tickets

    def close(self) -> None:
        """Refuse new events; writers drain what is queued and then stop."""
        self._closed = True
        self._ready.set()
