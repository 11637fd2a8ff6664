"""The access log: one line per HTTP request with `EVENT_METRICS_ACCESS_LOG=true` (off by
default), written by the edge layer (edge.py) once the answer is sent, so it covers every
route, the raw ASGI POST /events included.

A line holds the method, the route (the route's path, never the request's query or an
unknown path, which could hold a key), the status, the duration, and what the handlers
noted on the way: the project, and the events accepted, duplicate and rejected. The
request id comes with every line of a request (logs.py). With the JSON log format each
of these is a field of its own.
"""

from __future__ import annotations

import contextvars
import logging
import time

log = logging.getLogger("event_metrics.access")


class Entry:
    """What one request's line will say, filled in as the request goes."""

    __slots__ = ("accepted", "duplicates", "project_id", "queued", "rejected", "started", "status")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.status: int | None = None  # None: no answer was sent
        self.project_id: int | None = None
        self.accepted: int | None = None
        self.duplicates: int | None = None
        self.rejected: int | None = None
        self.queued: int | None = None


# The request's entry while the access log is on; None otherwise, so that noting costs
# the handlers one lookup.
current: contextvars.ContextVar[Entry | None] = contextvars.ContextVar("access_entry", default=None)


def note_project(project_id: int) -> None:
    """The project the request's key belongs to."""
    entry = current.get()
    if entry is not None:
        entry.project_id = project_id


def note_events(accepted: int, duplicates: int, rejected: int, queued: int | None) -> None:
    """What became of the request's events (queued: with ?wait=false)."""
    entry = current.get()
    if entry is not None:
        entry.accepted, entry.duplicates = accepted, duplicates
        entry.rejected, entry.queued = rejected, queued


def write(entry: Entry, method: str, route: str) -> None:
    """Log the request's line (the caller still holds the request id in the context)."""
    duration_ms = round((time.perf_counter() - entry.started) * 1000, 2)
    fields = {
        "method": method, "route": route, "status": entry.status, "duration_ms": duration_ms,
        "project_id": entry.project_id,
    }  # fmt: skip
    text = f"{method} {route} {entry.status or '-'} {duration_ms}ms"
    if entry.project_id is not None:
        text += f" project={entry.project_id}"
    if entry.accepted is not None:
        fields.update(accepted=entry.accepted, duplicates=entry.duplicates,
                      rejected=entry.rejected)  # fmt: skip
        text += f" accepted={entry.accepted} duplicates={entry.duplicates}"
        text += f" rejected={entry.rejected}"
        if entry.queued is not None:
            fields["queued"] = entry.queued
            text += f" queued={entry.queued}"
    # A record made directly: log.info() would also walk the stack for the caller's file
    # and line, which no log format here shows (a tenth of a line's cost).
    if log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, text, (), None, extra=fields))
