"""`serve` on the embedded PostgreSQL, as an operator meets it: a hang-up stops every
process it started, PostgreSQL included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import free_port, postmaster_pid

ROOT = Path(__file__).resolve().parents[2]


def environment(data_dir: Path, **variables: str) -> dict[str, str]:
    """This environment without EVENT_METRICS_* (so no database URL), plus `variables`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENT_METRICS_")}
    return env | {"EVENT_METRICS_DATA_DIR": str(data_dir),
                  **{f"EVENT_METRICS_{k.upper()}": v for k, v in variables.items()}}  # fmt: skip


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> Iterator[psutil.Popen]:
    """Run argv in a session (and process group) of its own, as a terminal runs a command;
    yield once /health answers; kill whatever is left of the group on the way out."""
    process = psutil.Popen(
        argv, env=env, cwd=cwd, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{env['EVENT_METRICS_PORT']}/health"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stderr.read().decode()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /health within 60 s")
            time.sleep(0.05)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]


def wait_gone(processes: list[psutil.Process], timeout_s: float = 30) -> list[psutil.Process]:
    """Wait until every process has exited; return those still alive after timeout_s."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return alive


@pytest.mark.parametrize(
    ("command", "workers"),
    [(["make", "--no-print-directory", "serve"], "1"),
     ([sys.executable, "-m", "event_metrics.cli", "serve"], "2")],
    ids=["make-serve", "serve-2-workers"],
)  # fmt: skip
def test_a_hang_up_stops_serve_and_the_embedded_postgres(
    embedded_data_dir: Path, command: list[str], workers: str
) -> None:
    """Closing the terminal (SIGHUP to the process group) stops serve, its workers and the
    embedded PostgreSQL, as SIGTERM does: nothing is left running, adopted by PID 1."""
    env = environment(embedded_data_dir, port=str(free_port()), http_workers=workers)
    with serving(command, env) as top:
        postmaster = postmaster_pid(embedded_data_dir / "postgres")
        assert postmaster is not None, "the embedded PostgreSQL did not start"
        started = [top, *top.children(recursive=True), psutil.Process(postmaster)]
        os.killpg(top.pid, signal.SIGHUP)
        left = wait_gone(started)
        assert not left, f"still running after SIGHUP: {[p.pid for p in left]}"
        stderr = top.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr, stderr
    assert not (embedded_data_dir / "postgres" / "postmaster.pid").exists()
