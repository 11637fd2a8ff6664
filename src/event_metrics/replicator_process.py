"""The replicator in a process of its own, next to the HTTP workers.

Copying to ClickHouse is Python work per row (fetch, reshape, encode: ~3 us, ~5 us when
this module was written). Inside an HTTP worker that work holds the event loop or the
GIL for milliseconds at a time, and the requests that arrive meanwhile wait: wrk's p99
was 20 ms with the replicator in the worker and 14 ms with it beside it
(docs/benchmarks.md). So `serve` starts `event-metrics replicate --status-file F` as a
child, restarts it with backoff if it exits (writing why into F at once), and stops it on
the way out. The child writes its status (what /health shows) to F after each lag
measurement and at least every second; each HTTP worker reads F for /health, the gauges
and the freshness of ClickHouse answers, adding the report's own age to the lag's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from event_metrics.replicator import Replicator
from event_metrics.retry import Backoff, describe
from event_metrics.worker import LoopState, StatusSource

log = logging.getLogger(__name__)

# Set by `serve` for its HTTP workers: where the child's status is (not a setting).
STATUS_FILE_VARIABLE = "EVENT_METRICS_REPLICATOR_STATUS_FILE"
REPORT_EVERY_S = 1.0
# A status this old means the child is gone or hung: /health says so.
SILENT_AFTER_S = 10.0
RESTART_INITIAL_S = 0.5  # the first restart's delay; doubling up to REPLICATOR_RESTART_MAX_MS
# A child that ran this long before it exited failed afresh: its restart waits the
# initial delay again, not the crash loop's longest.
FRESH_FAILURE_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In the child: get SIGTERM when serve dies, even by SIGKILL (no orphan replicator)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # serve died before the line above
        raise SystemExit(0)


class ChildFailed(Exception):
    """The replicator process exited, or could not start."""


class ReplicatorProcess:
    """Runs `event-metrics replicate` as a child of serve; restarts it when it exits.

    The worker shape (worker.py) on a thread, since serve's own process runs no event loop
    of ours: start(), stop(), status(), a LoopState that logs each change once, and a
    backoff between restarts with its own cap (REPLICATOR_RESTART_MAX_MS).
    """

    def __init__(self, status_file: Path, *, restart_max_s: float) -> None:
        self.status_file = status_file
        self.backoff = Backoff(initial_s=RESTART_INITIAL_S, max_s=restart_max_s)
        self.loop_state = LoopState("replicator process", log)
        self.child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="replicator", daemon=True)

    def status(self) -> dict[str, Any]:
        return {"state": self.loop_state.state, "last_error": self.loop_state.last_error}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the child (it finishes the block it is copying), SIGKILL after timeout_s."""
        self._stopping.set()
        with self._lock:
            child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("replicator process did not stop within %.0f s; killed", timeout_s)
                child.kill()
                child.wait()
        self._thread.join(timeout_s)
        self.loop_state.set("stopped")

    def _supervise(self) -> None:
        argv = [sys.executable, "-m", "event_metrics.cli", "replicate", "--status-file",
                str(self.status_file), "--parent-pid", str(os.getpid())]  # fmt: skip
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.child = subprocess.Popen(argv)
            except OSError as exc:  # no process at all (out of memory, pids): try again
                failure = ChildFailed(f"could not start ({describe(exc)})")
            else:
                log.info("replicator process %d started", self.child.pid)
                self.loop_state.set("running")
                failure = ChildFailed(f"exited with status {self.child.wait()}")
            if self._stopping.is_set():
                return
            if time.monotonic() - started > FRESH_FAILURE_AFTER_S:
                self.backoff.reset()  # it ran a while: a fresh failure, not a crash loop
            self.loop_state.fail(failure, retry_in_s=self.backoff.max_s)
            self._report_failure(failure)
            self._stopping.wait(self.backoff.next_delay())

    def _report_failure(self, failure: ChildFailed) -> None:
        """Say in the status file, at once, that the replicator is failing and why: the
        child that wrote it is gone, and the next one reports afresh. The report's time
        stays the child's, so its lag keeps ageing."""
        try:
            report: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            report = {}  # none yet
        report.update(state="failing", last_error=f"the replicator process {failure}")
        temporary = self.status_file.with_name(self.status_file.name + ".supervisor")
        with contextlib.suppress(OSError):  # the folder goes when serve exits
            temporary.write_text(json.dumps(report))
            temporary.replace(self.status_file)


@contextlib.contextmanager
def replicator_process(*, restart_max_s: float) -> Iterator[ReplicatorProcess]:
    """A supervised child replicator, its status file announced to the HTTP workers."""
    with tempfile.TemporaryDirectory(prefix="event-metrics-replicator-") as folder:
        status_file = Path(folder) / "status.json"
        os.environ[STATUS_FILE_VARIABLE] = str(status_file)
        process = ReplicatorProcess(status_file, restart_max_s=restart_max_s)
        process.start()
        try:
            yield process
        finally:
            process.stop()
            del os.environ[STATUS_FILE_VARIABLE]


async def report_status(replicator: Replicator, status_file: Path) -> None:
    """In the child: write the replicator's status to the file, atomically, after each lag
    measurement and at least every second."""
    temporary = status_file.with_name(status_file.name + f".{os.getpid()}")
    while True:
        replicator.measured.clear()  # before the status is taken: no measurement is missed
        report = {**replicator.status(), "reported_at": time.time()}
        with contextlib.suppress(OSError):  # the folder goes when serve exits
            temporary.write_text(json.dumps(report))
            temporary.replace(status_file)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(replicator.measured.wait(), REPORT_EVERY_S)


class ReplicatorStatus(StatusSource):
    """In an HTTP worker: the child's last report, as /health shows a replicator."""

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file
        self.started = time.time()

    def status(self) -> dict[str, Any]:
        try:
            report: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            report = {}  # none yet, or serve's folder is gone
        reported_at = report.pop("reported_at", self.started)
        status = {**_NOT_YET_REPORTED, **report}
        silent_s = time.time() - reported_at
        if status["lag_age_s"] is not None:  # measured that long before the report
            status["lag_age_s"] = round(status["lag_age_s"] + max(0.0, silent_s), 3)
        if silent_s > SILENT_AFTER_S:
            status["state"] = "failing"
            status["last_error"] = f"the replicator process has not reported for {silent_s:.0f} s"
        return status


# What /health shows before the child's first report: Replicator.status()'s fields, the
# lag unknown (never 0: nothing says the mirror is current yet).
_NOT_YET_REPORTED: dict[str, Any] = {
    "state": "starting",
    "lag_rows": None,
    "lag_rows_capped": False,
    "lag_seconds": None,
    "lag_age_s": None,
    "rows_per_second": 0.0,
    "eta_seconds": None,
    "last_error": None,
    "rows_copied": 0,
}
