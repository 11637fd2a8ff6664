"""Telemetry: the Prometheus metrics, served at GET /internal/metrics
(EVENT_METRICS_PROMETHEUS=false turns the route off). docs/operations.md lists every
metric; docs/grafana/ graphs them.

Counters and histograms are updated where things happen; the four that move with every
request (events, requests, commits, ack times) are tallied in plain Python and added to
the Prometheus values by `refresh`. Gauges that describe a state (queue depth, lags,
loop states) are set from the parts' own status, also by `refresh`, which runs before
every scrape and once a second in every process. With several HTTP worker
processes, `event-metrics serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before they start: each process then writes its numbers to files there, and a scrape,
whichever process answers it, adds them up across processes.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

PATH = "/internal/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # the name prometheus-client reads

# Events by what became of them. Rejections carry a reason from a fixed set
# (events.REJECTION_REASONS), never the message: labels must stay few.
EVENTS = Counter(
    "event_metrics_events",
    "Events committed, by protocol and outcome: accepted (new) or duplicate",
    ["protocol", "outcome"],
)
REJECTED = Counter(
    "event_metrics_events_rejected",
    "Events refused one by one, by protocol and reason",
    ["protocol", "reason"],
)
REQUESTS = Counter(
    "event_metrics_http_requests",
    "HTTP requests answered, by route and status code",
    ["route", "status"],
)
COMMITS = Counter("event_metrics_writer_commits", "Transactions the writers committed")
COMMIT_ROWS = Histogram(
    "event_metrics_writer_commit_rows",
    "Events per committed transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
COMMIT_SECONDS = Histogram(
    "event_metrics_writer_commit_seconds",
    "Time to write and commit one batch (COPY or INSERT, then COMMIT)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACK_SECONDS = Histogram(
    "event_metrics_ingest_ack_seconds",
    "From a request's events entering the queue to their commit (what a client waits)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter(
    "event_metrics_retries",
    "Failed attempts of a background loop, each retried with backoff",
    ["loop"],
)
QUERY_SECONDS = Histogram(
    "event_metrics_query_seconds",
    "GET /metrics answer time, by the engine and plan that answered",
    ["backend", "plan"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_EVENTS = Gauge(
    "event_metrics_queue_events", "Events waiting for a writer", multiprocess_mode="livesum"
)
QUEUE_CAPACITY = Gauge(
    "event_metrics_queue_capacity_events",
    "Events the queue holds at most",
    multiprocess_mode="livesum",
)
QUEUE_OLDEST = Gauge(
    "event_metrics_queue_oldest_age_seconds",
    "How long the oldest waiting event has waited",
    multiprocess_mode="livemax",
)
LAG_ROWS = Gauge(
    "event_metrics_lag_rows",
    "Committed events a follower (replication, rollups) has not processed yet",
    ["loop"],
    multiprocess_mode="livemax",
)
LAG_SECONDS = Gauge(
    "event_metrics_lag_seconds",
    "Age of the oldest committed event a follower has not processed yet",
    ["loop"],
    multiprocess_mode="livemax",
)
FOLLOWER_RATE = Gauge(
    "event_metrics_follower_rows_per_second",
    "Rows a follower (replication, rollups) copied or folded per second, over the last 10 s",
    ["loop"],
    multiprocess_mode="livemax",
)
STATE = Gauge(
    "event_metrics_loop_state",
    "1 for the state each background loop is in (in any process), 0 for the others",
    ["loop", "state"],
    multiprocess_mode="livemax",
)
LOOP_STATES = ("starting", "running", "catching_up", "standby", "failing", "stalled", "stopped")


class _Tally:
    """A histogram's observations since the last flush, as bucket counts and a sum.

    With several worker processes each Prometheus value write is a locked write to a
    shared file: ~6% of a single event's CPU for the four per-request metrics. Counting
    in a list and adding the counts once a second costs a list increment instead.
    """

    __slots__ = ("bounds", "counts", "histogram", "total")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        if not any(counts):
            return
        self.histogram._sum.inc(total)
        for bucket, count in zip(self.histogram._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


_ACK = _Tally(ACK_SECONDS)
_COMMIT_ROWS = _Tally(COMMIT_ROWS)
_COMMIT_SECONDS = _Tally(COMMIT_SECONDS)
_TALLIES = (_ACK, _COMMIT_ROWS, _COMMIT_SECONDS)
_events: collections.Counter[tuple[str, str]] = collections.Counter()
_requests: collections.Counter[tuple[str, int]] = collections.Counter()
_commits = [0]


def count_committed(protocol: str, outcome: list[bool], waited_s: float) -> None:
    """One request's events committed: how many were new, how long the request waited."""
    fresh = sum(outcome)
    if fresh:
        _events[protocol, "accepted"] += fresh
    if fresh < len(outcome):
        _events[protocol, "duplicate"] += len(outcome) - fresh
    _ACK.observe(waited_s)


def count_commit(rows: int, seconds: float) -> None:
    _commits[0] += 1
    _COMMIT_ROWS.observe(rows)
    _COMMIT_SECONDS.observe(seconds)


def count_request(route: str, status: int) -> None:
    _requests[route, status] += 1


def flush() -> None:
    """Add what was tallied since the last flush to the Prometheus values."""
    for tally in _TALLIES:
        tally.flush()
    commits, _commits[0] = _commits[0], 0
    if commits:
        COMMITS.inc(commits)
    for counts, counter in ((_events, EVENTS), (_requests, REQUESTS)):
        pending = list(counts.items())
        counts.clear()
        for labels, n in pending:
            _labelled(counter, *labels).inc(n)


@functools.cache  # few label sets (edge.py bounds the routes): each looked up once
def _labelled(counter: Counter, *labels: object) -> Any:
    return counter.labels(*(str(label) for label in labels))


@dataclass(frozen=True)
class Readings:
    """What the gauges show, read from the running parts (services.Services.readings)."""

    queue_events: int
    queue_capacity: int
    queue_oldest_s: float
    # By loop, named like the loops' own (LoopState) names as the retries counter is:
    # each one's status as /health shows it.
    loops: Mapping[str, Mapping[str, Any]]


def refresh(readings: Readings) -> None:
    """Flush the tallies; set the gauges from the parts' own status (what /health shows)."""
    flush()
    QUEUE_EVENTS.set(readings.queue_events)
    QUEUE_CAPACITY.set(readings.queue_capacity)
    QUEUE_OLDEST.set(readings.queue_oldest_s)
    for name, status in readings.loops.items():
        for state in LOOP_STATES:
            STATE.labels(name, state).set(1 if status["state"] == state else 0)
        if status.get("lag_rows") is not None:  # None: not measured yet
            LAG_ROWS.labels(name).set(status["lag_rows"])
            LAG_SECONDS.labels(name).set(status["lag_seconds"])
        if "rows_per_second" in status:
            FOLLOWER_RATE.labels(name).set(status["rows_per_second"])


# prometheus-client picks files or memory for a process's values when it is imported.
# A single-worker `serve` imported it before it set the directory up for its replicator
# child: that process keeps its numbers in memory and adds the child's files to them.
_IN_FILES = bool(os.environ.get(MULTIPROCESS_DIR))


def exposition() -> bytes:
    """The text a scrape gets: this process's registry, all processes' files, or both."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return generate_latest(REGISTRY)
    files = CollectorRegistry()
    multiprocess.MultiProcessCollector(files)  # type: ignore[no-untyped-call]
    if _IN_FILES:
        return generate_latest(files)
    return generate_latest(_Merged([REGISTRY, files]))


class _Merged(CollectorRegistry):
    """Several registries as one: samples with the same name and labels are added up
    (gauges: the largest), as the multiprocess collector adds up processes."""

    def __init__(self, parts: list[CollectorRegistry]) -> None:
        super().__init__(auto_describe=False)
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        where: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}  # sample -> position
        for part in self.parts:
            for family in part.collect():
                into = merged.setdefault(family.name, Metric(family.name, family.documentation,
                                                             family.type))  # fmt: skip
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    at = where.get(key)
                    if at is None:
                        where[key] = len(into.samples)
                        into.samples.append(sample)
                        continue
                    old = into.samples[at].value
                    largest = family.type == "gauge" or sample.name.endswith("_created")
                    new = max(old, sample.value) if largest else old + sample.value
                    into.samples[at] = into.samples[at]._replace(value=new)
        yield from merged.values()


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[None]:
    """With several worker processes, a fresh directory for their metric files, set in
    the environment they inherit (a directory given in PROMETHEUS_MULTIPROC_DIR is
    emptied instead: numbers from an earlier run must not be added in)."""
    if workers == 1:
        yield
        return
    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="event-metrics-prometheus-") as folder:
        os.environ[MULTIPROCESS_DIR] = folder
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def process_exited() -> None:
    """Record the last tallies; drop this process's live gauges from the multiprocess
    files on a clean exit."""
    flush()
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
