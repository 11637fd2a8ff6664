"""A follower's state and figures, from its cycles and lag measurements: `running` only
when caught up, `catching_up` while a backlog is worked through, the lag unknown before
it was measured, the rate and the time to catch up from the last seconds' measurements."""

from __future__ import annotations

import time

import pytest

from event_metrics.lag import Lag, Progress
from event_metrics.replicator import Replicator
from event_metrics.rollups import RollupRefresher
from event_metrics.settings import Settings

SETTINGS = Settings.build(replication_batch_rows=100, rollup_block_rows=1000)


def replicator() -> Replicator:
    return Replicator("", "", SETTINGS.replication, lag=SETTINGS.lag)


def measured(rows: int, at: float, *, capped: bool = False) -> Lag:
    return Lag(rows=rows, capped=capped, seconds=2.0, measured_at=at)


def test_before_the_first_measurement_the_lag_is_unknown_not_zero() -> None:
    for follower in (replicator(), RollupRefresher("", SETTINGS.rollups)):
        status = follower.status()
        assert status["state"] == "starting"
        assert status["lag_rows"] is None and status["lag_seconds"] is None
        assert status["lag_age_s"] is None and status["eta_seconds"] is None


def test_a_full_batch_is_catching_up_and_a_partial_one_running() -> None:
    follower = replicator()
    follower.finish_cycle(100, time.time())  # a full batch: more may be waiting
    assert follower.state == "catching_up"
    follower.finish_cycle(99, time.time())  # it took everything committed
    assert follower.state == "running"
    assert follower.rows_copied == 199


def test_a_partial_batch_with_a_backlog_measured_since_is_still_catching_up() -> None:
    follower = replicator()
    started = time.time()
    # Measured while the cycle ran: a full batch or more waits (a burst, a long
    # transaction holding the horizon back), whatever this cycle found.
    follower.record_lag(measured(150, started + 0.01))
    follower.finish_cycle(10, started)
    assert follower.state == "catching_up"
    # A measurement from before the cycle began says nothing about what it left.
    later = time.time() + 1
    follower.finish_cycle(10, later)
    assert follower.state == "running"


def test_a_measured_backlog_turns_running_into_catching_up_at_once() -> None:
    follower = replicator()
    follower.finish_cycle(5, time.time())
    follower.record_lag(measured(99, time.time()))
    assert follower.state == "running"  # less than one batch behind
    follower.record_lag(measured(100, time.time(), capped=True))
    status = follower.status()
    assert status["state"] == "catching_up"
    assert (status["lag_rows"], status["lag_rows_capped"]) == (100, True)


def test_failing_and_standby_are_not_changed_by_a_measurement() -> None:
    follower = replicator()
    follower.loop_state.fail(OSError("refused"))
    follower.record_lag(measured(10_000, time.time()))
    assert follower.state == "failing"
    assert follower.status()["lag_rows"] == 10_000  # but the lag is shown


def test_progress_gives_the_rate_done_and_the_time_until_the_lag_is_zero() -> None:
    progress = Progress(window_s=10)
    assert progress.rows_per_second() == 0.0 and progress.eta_seconds() is None
    # Copying 1,000 rows/s while 200/s arrive: the lag falls by 800/s.
    for second in range(6):
        progress.add(measured(10_000 - 800 * second, 100.0 + second), 1_000 * second)
    assert progress.rows_per_second() == pytest.approx(1_000)
    assert progress.eta_seconds() == pytest.approx(6_000 / 800)
    # Measurements older than the window are dropped.
    progress.add(measured(5_000, 120.0), 20_000)
    assert progress.rows_per_second() == 0.0  # one measurement left: no rate


def test_a_lag_that_does_not_fall_has_no_time_to_catch_up() -> None:
    progress = Progress(window_s=10)
    progress.add(measured(1_000, 100.0), 0)
    progress.add(measured(1_500, 101.0), 0)  # an outage: nothing copied, rows arrive
    assert progress.eta_seconds() is None
    assert progress.rows_per_second() == 0.0


def test_eta_is_shown_only_while_catching_up() -> None:
    follower = replicator()
    follower.finish_cycle(100, time.time())
    now = time.time()
    follower.record_lag(measured(5_000, now - 1))
    follower.rows_done += 1_000
    follower.record_lag(measured(4_000, now))
    status = follower.status()
    assert status["state"] == "catching_up"
    assert status["eta_seconds"] == pytest.approx(4.0, abs=0.1)
    assert status["rows_per_second"] == pytest.approx(1_000, rel=0.01)
    follower.finish_cycle(0, time.time() + 5)
    assert follower.status()["eta_seconds"] is None
