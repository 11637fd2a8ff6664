"""The per-request tallies add up to what Prometheus's own observe() and inc() record."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from event_metrics import telemetry

BOUNDS = (0.001, 0.01, 0.1, 1, 10)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]  # fmt: skip


def test_a_tally_flushes_exactly_what_observe_would_record() -> None:
    values = [0.0, 0.001, 0.0010001, 0.01, 0.5, 1, 10, 10.5, math.inf, -1.0]
    values += [random.Random(7).expovariate(3) for _ in range(500)]
    observed, tallied = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", buckets=BOUNDS, registry=observed)
    buffered = Histogram("h", "h", buckets=BOUNDS, registry=tallied)
    tally = telemetry._Tally(buffered)
    for v in values:
        direct.observe(v)
        tally.observe(v)
    assert exposition(tallied) != exposition(observed)  # nothing written before the flush
    tally.flush()
    tally.flush()  # a second flush adds nothing
    assert exposition(tallied) == exposition(observed)


def test_flush_moves_the_per_request_counters() -> None:
    def count(name: str, **labels: str) -> float:
        return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0

    telemetry.flush()
    before = (count("event_metrics_http_requests_total", route="/events", status="200"),
              count("event_metrics_events_total", protocol="native", outcome="duplicate"),
              count("event_metrics_writer_commits_total"),
              count("event_metrics_ingest_ack_seconds_count"))  # fmt: skip
    for _ in range(3):
        telemetry.count_request("/events", 200)
    telemetry.count_committed("native", [True, False, False], 0.002)
    telemetry.count_commit(3, 0.001)
    telemetry.flush()
    after = (count("event_metrics_http_requests_total", route="/events", status="200"),
             count("event_metrics_events_total", protocol="native", outcome="duplicate"),
             count("event_metrics_writer_commits_total"),
             count("event_metrics_ingest_ack_seconds_count"))  # fmt: skip
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2, 1, 1]


def test_a_merged_exposition_adds_counters_and_keeps_the_largest_gauge() -> None:
    from prometheus_client import Counter, Gauge

    first, second = CollectorRegistry(), CollectorRegistry()
    for registry, (count, level) in ((first, (2, 5)), (second, (3, 7))):
        Counter("c", "c", ["loop"], registry=registry).labels("a").inc(count)
        Gauge("g", "g", registry=registry).set(level)
    Counter("only", "only", registry=second).inc(4)
    merged = exposition(telemetry._Merged([first, second]))
    assert 'c_total{loop="a"} 5.0' in merged
    assert "g 7.0" in merged
    assert "only_total 4.0" in merged
    assert sum(line.startswith("c_total") for line in merged) == 1
