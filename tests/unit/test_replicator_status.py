"""What an HTTP worker shows of the replicator child: its report, `starting` before the
first one, and `failing` once the reports stop (the child died or hangs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from event_metrics import replicator_process
from event_metrics.replicator_process import ReplicatorStatus
from event_metrics.retry import Backoff


def write(path: Path, age_s: float, **fields: object) -> None:
    path.write_text(json.dumps({**fields, "reported_at": time.time() - age_s}))


def test_a_fresh_report_is_shown_as_the_child_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    report = {"state": "catching_up", "lag_rows": 7, "lag_rows_capped": False,
              "lag_seconds": 0.4, "lag_age_s": 0.5, "rows_per_second": 12.5,
              "eta_seconds": 0.6, "last_error": None, "rows_copied": 99}  # fmt: skip
    write(path, 1, **report)
    status = ReplicatorStatus(path).status()
    # The lag was measured 0.5 s before a report written 1 s ago.
    assert status.pop("lag_age_s") == pytest.approx(1.5, abs=0.2)
    assert status == {k: v for k, v in report.items() if k != "lag_age_s"}


def test_before_the_first_report_it_is_starting_with_the_lag_unknown(tmp_path: Path) -> None:
    status = ReplicatorStatus(tmp_path / "status.json").status()
    assert status["state"] == "starting"
    # Nothing was measured: the lag is unknown, never 0 (the mirror may be far behind).
    assert status["lag_rows"] is None and status["lag_seconds"] is None
    assert status["lag_age_s"] is None


def test_before_the_first_report_it_is_starting_then_failing(tmp_path: Path) -> None:
    watch = ReplicatorStatus(tmp_path / "status.json")
    assert watch.status()["state"] == "starting"
    watch.started -= replicator_process.SILENT_AFTER_S + 1  # no report in time
    status = watch.status()
    assert status["state"] == "failing"
    assert "has not reported" in status["last_error"]


def test_a_stale_report_is_failing_and_keeps_the_last_lag(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write(path, replicator_process.SILENT_AFTER_S + 5, state="running", lag_rows=12,
          lag_rows_capped=False, lag_seconds=3.0, lag_age_s=0.2, rows_per_second=0.0,
          eta_seconds=None, last_error=None, rows_copied=5)  # fmt: skip
    status = ReplicatorStatus(path).status()
    assert status["state"] == "failing"
    assert status["lag_rows"] == 12 and status["rows_copied"] == 5
    assert status["lag_age_s"] >= replicator_process.SILENT_AFTER_S + 5  # and says how old
    assert "has not reported for 15 s" in status["last_error"]


def test_a_torn_file_reads_as_no_report(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"state": "runn')
    assert ReplicatorStatus(path).status()["state"] == "starting"


def test_the_supervisor_retries_when_the_child_cannot_even_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def refuse(*_: object, **__: object) -> None:
        attempts.append(1)
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(replicator_process.subprocess, "Popen", refuse)
    supervisor = replicator_process.ReplicatorProcess(tmp_path / "s.json", restart_max_s=0.1)
    supervisor.backoff = Backoff(initial_s=0.01, max_s=0.02)
    supervisor.start()
    deadline = time.monotonic() + 5
    while len(attempts) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    supervisor.stop()
    assert len(attempts) >= 3  # the thread kept trying instead of dying
    assert "could not start (OSError" in caplog.text


def test_a_child_that_exits_is_reported_failing_at_once_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.json"
    write(path, 0, state="running", lag_rows=3, lag_rows_capped=False, lag_seconds=0.1,
          lag_age_s=0.2, rows_per_second=1.0, eta_seconds=None, last_error=None,
          rows_copied=5)  # fmt: skip

    class Exits:
        pid = 4242

        def wait(self, timeout: float | None = None) -> int:
            return 3

        def poll(self) -> int:
            return 3

    monkeypatch.setattr(replicator_process.subprocess, "Popen", lambda *_, **__: Exits())
    supervisor = replicator_process.ReplicatorProcess(path, restart_max_s=0.02)
    supervisor.backoff = Backoff(initial_s=0.01, max_s=0.02)
    supervisor.start()
    deadline = time.monotonic() + 5
    while ReplicatorStatus(path).status()["state"] != "failing" and time.monotonic() < deadline:
        time.sleep(0.01)
    supervisor.stop()
    status = ReplicatorStatus(path).status()
    # Well before SILENT_AFTER_S: the supervisor said so, and kept what the child last said.
    assert status["state"] == "failing"
    assert status["last_error"] == "the replicator process exited with status 3"
    assert status["rows_copied"] == 5
    assert supervisor.status()["state"] == "stopped"
