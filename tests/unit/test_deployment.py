"""The deployment files and the docs agree with the code: variable names, ports, URLs.

compose.yaml, Containerfile, .ci/run, the Makefile and the docs name settings, ports and
commands that the code defines; nothing else checks them, so they drift. These tests read
them as text (no Docker engine needed) and compare them with `Settings`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
import yaml

from event_metrics.settings import PREFIX, ConfigError, Settings, variables

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {variable.name: variable.default for variable in variables()}
ALIASES = {PREFIX + alias for variable in variables() for alias in variable.env.aliases}
VARIABLES = set(DEFAULTS) | ALIASES
# Read by the tests and .ci/run, not by the service.
TEST_VARIABLES = {
    "EVENT_METRICS_REQUIRE_SERVICES",
    "EVENT_METRICS_TEST_POSTGRES_URL",
    "EVENT_METRICS_CLICKHOUSE_BINARY",
}
VARIABLE_PATTERN = re.compile(r"\bEVENT_METRICS_[A-Z0-9_]*[A-Z0-9]\b")


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_read("compose.yaml"))
    return loaded


@pytest.fixture(scope="module")
def api_env(compose: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in compose["services"]["api"]["environment"].items()}


def _service_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {key: str(value) for key, value in compose["services"][service]["environment"].items()}


def _instructions() -> list[tuple[str, str]]:
    """The Containerfile as (INSTRUCTION, arguments), continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in _read("Containerfile").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Containerfile ends inside a continued line"
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (entry.partition(" ") for entry in logical)
    ]


def _containerfile(keyword: str) -> list[str]:
    return [rest for name, rest in _instructions() if name == keyword]


# compose.yaml


def test_compose_variables_are_settings(api_env: dict[str, str]) -> None:
    unknown = {key for key in api_env if key.startswith(PREFIX)} - VARIABLES
    assert not unknown, f"compose.yaml sets variables no Settings field reads: {unknown}"


def test_settings_accept_the_compose_environment(api_env: dict[str, str]) -> None:
    settings = Settings.from_env(api_env)
    assert settings.http.host == "0.0.0.0"
    assert settings.backend == "clickhouse"
    assert settings.database_url and settings.clickhouse_url


def test_api_port_matches_settings_and_containerfile(
    compose: dict[str, Any], api_env: dict[str, str]
) -> None:
    port = Settings.from_env(api_env).http.port
    published = [str(mapping) for mapping in compose["services"]["api"]["ports"]]
    assert any(mapping.rsplit(":", 1)[-1] == str(port) for mapping in published), published
    assert _containerfile("EXPOSE") == [str(port)]
    (healthcheck,) = _containerfile("HEALTHCHECK")
    assert f"127.0.0.1:{port}/health" in healthcheck
    container_env = " ".join(_containerfile("ENV"))
    assert f"EVENT_METRICS_PORT={port}" in container_env


def test_clickhouse_url_matches_the_clickhouse_service(
    compose: dict[str, Any], api_env: dict[str, str]
) -> None:
    url = urlsplit(api_env["EVENT_METRICS_CLICKHOUSE_URL"])
    env = _service_env(compose, "clickhouse")
    assert url.scheme == "clickhouse"
    assert url.hostname == "clickhouse" and "clickhouse" in compose["services"]
    assert url.port == 9000, "clickhouse-driver speaks the native protocol (port 9000)"
    assert url.path.lstrip("/") == env["CLICKHOUSE_DB"]
    assert (url.username, url.password) == (env["CLICKHOUSE_USER"], env["CLICKHOUSE_PASSWORD"])


def test_postgres_url_matches_the_postgres_service(
    compose: dict[str, Any], api_env: dict[str, str]
) -> None:
    url = urlsplit(api_env["EVENT_METRICS_DATABASE_URL"])
    env = _service_env(compose, "postgres")
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "postgres" and url.port in (None, 5432)
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.path.lstrip("/") == env["POSTGRES_DB"]


def test_api_waits_for_healthy_databases(compose: dict[str, Any]) -> None:
    depends = compose["services"]["api"]["depends_on"]
    for service in ("postgres", "clickhouse"):
        assert depends[service]["condition"] == "service_healthy"
        assert "healthcheck" in compose["services"][service]


# compose.yaml, profile `cluster`

CLUSTER_SERVICES = {"api-cluster", "postgres-cluster", "clickhouse-shard-1", "clickhouse-shard-2"}


def _remote_servers(compose: dict[str, Any], service: str) -> dict[str, list[dict[str, str]]]:
    """The clusters a ClickHouse service's mounted config files define: name -> replicas."""
    clusters: dict[str, list[dict[str, str]]] = {}
    for volume in compose["services"][service]["volumes"]:
        source, _, target = str(volume).partition(":")
        if not target.startswith("/etc/clickhouse-server/config.d/"):
            continue
        assert (ROOT / source).is_file(), f"{service} mounts missing {source}"
        root = ElementTree.parse(ROOT / source).getroot()
        for cluster in root.findall("remote_servers/*"):
            clusters[cluster.tag] = [
                {field.tag: (field.text or "") for field in replica}
                for replica in cluster.findall("shard/replica")
            ]
    return clusters


def test_the_cluster_profile_is_a_stack_of_its_own(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiled = {
        name for name, service in services.items() if "cluster" in service.get("profiles", [])
    }
    assert profiled == CLUSTER_SERVICES
    # `docker compose up` alone starts nothing of it, and the default stack needs none of it.
    for name in set(services) - CLUSTER_SERVICES:
        assert not services[name].get("profiles"), name
        assert not set(services[name].get("depends_on", {})) & CLUSTER_SERVICES, name
    depends = services["api-cluster"]["depends_on"]
    for name in CLUSTER_SERVICES - {"api-cluster"}:
        assert depends[name]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    # The shards run the same ClickHouse as the single-node stack.
    for shard in ("clickhouse-shard-1", "clickhouse-shard-2"):
        assert services[shard]["image"] == services["clickhouse"]["image"]


def test_the_cluster_profile_names_a_cluster_its_shards_define(compose: dict[str, Any]) -> None:
    env = _service_env(compose, "api-cluster")
    assert {key for key in env if key.startswith(PREFIX)} <= VARIABLES
    settings = Settings.from_env(env)
    assert settings.clickhouse_cluster and settings.clickhouse_url
    url = urlsplit(settings.clickhouse_url)
    shards = ["clickhouse-shard-1", "clickhouse-shard-2"]
    definitions = [_remote_servers(compose, shard) for shard in shards]
    assert definitions[0] == definitions[1], "every node needs the same remote_servers"
    replicas = definitions[0][settings.clickhouse_cluster]
    assert sorted(replica["host"] for replica in replicas) == shards
    assert url.hostname in shards and url.port == 9000
    database = urlsplit(_service_env(compose, "api-cluster")["EVENT_METRICS_DATABASE_URL"])
    assert database.hostname == "postgres-cluster", "one PostgreSQL database feeds one mirror"
    for shard in shards:
        shard_env = _service_env(compose, shard)
        # The service uses its URL's user, password and database on every node, and so do
        # the nodes when they query each other.
        assert url.path.lstrip("/") == shard_env["CLICKHOUSE_DB"]
        assert (url.username, url.password) == (
            shard_env["CLICKHOUSE_USER"], shard_env["CLICKHOUSE_PASSWORD"]
        )  # fmt: skip
        for replica in replicas:
            assert replica["port"] == "9000"
            assert (replica["user"], replica["password"]) == (url.username, url.password)


# Containerfile


def test_containerfile_installs_from_the_lock() -> None:
    installs = [run for run in _containerfile("RUN") if "pip install" in run]
    assert installs and all("-c requirements.lock" in run for run in installs), installs


def test_containerfile_copies_existing_files() -> None:
    # A COPY of a file missing from the repository fails `docker compose up --build`.
    for arguments in _containerfile("COPY"):
        *sources, _destination = shlex.split(arguments)
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"Containerfile copies missing {source}"


def test_containerfile_has_what_serve_needs() -> None:
    copied = " ".join(_containerfile("COPY"))
    assert "alembic.ini" in copied, "serve runs the migrations: alembic.ini must be in the image"
    assert re.search(r"\balembic\b(?!\.ini)", copied), "the alembic/ folder must be in the image"
    (command,) = _containerfile("CMD")
    assert yaml.safe_load(command)[:2] == ["event-metrics", "serve"]


def test_containerfile_runs_as_non_root() -> None:
    users = _containerfile("USER")
    assert users, "the image must set USER"
    assert users[-1].split(":")[0] not in ("root", "0")


# CI and Makefile


def test_ci_runs_make_test_with_services_required() -> None:
    script = _read(".ci/run")
    assert re.search(r"^\s*make test\b", script, re.MULTILINE)
    assert re.search(r"^\s*export EVENT_METRICS_REQUIRE_SERVICES=1\s*$", script, re.MULTILINE)


def _make_targets() -> dict[str, str]:
    """Makefile target name -> its recipe."""
    targets: dict[str, str] = {}
    current = None
    for line in _read("Makefile").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if match:
            current = match.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line.strip() + "\n"
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


def test_makefile_has_the_documented_targets() -> None:
    targets = _make_targets()
    assert "pytest" in targets["test"]
    assert "event-metrics serve" in targets["serve"]
    readme_targets = set(re.findall(r"\bmake ([a-z][a-z-]*)", _read("README.md")))
    assert {"serve", "test"} <= readme_targets
    assert readme_targets <= set(targets), readme_targets - set(targets)


# Docs


DOCS = ["README.md", *(str(path.relative_to(ROOT)) for path in sorted(ROOT.glob("docs/*.md")))]


@pytest.mark.parametrize("doc", DOCS)
def test_documented_variables_exist(doc: str) -> None:
    named = set(VARIABLE_PATTERN.findall(_read(doc)))
    unknown = named - VARIABLES - TEST_VARIABLES
    assert not unknown, f"{doc} names variables that nothing reads: {sorted(unknown)}"


def _render_default(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def test_readme_configuration_table_matches_settings() -> None:
    rows = {}
    for line in _read("README.md").splitlines():
        match = re.match(r"^\| `(EVENT_METRICS_[A-Z0-9_]+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    expected = {name: _render_default(default) for name, default in DEFAULTS.items()}
    missing = sorted(set(expected) - set(rows))
    assert not missing, "README.md's configuration table lacks rows:\n" + "\n".join(
        f"| `{name}` | {expected[name]} | ... |" for name in missing
    )
    wrong = {name: (rows[name], want) for name, want in expected.items() if rows[name] != want}
    assert not wrong, f"README.md defaults differ from Settings (README, code): {wrong}"
    assert set(rows) <= set(expected), set(rows) - set(expected)


# Settings.from_env and the CLI


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENT_METRICS_PORT", "abc"),
        ("EVENT_METRICS_PORT", "70000"),
        ("EVENT_METRICS_WRITER_COUNT", "0"),
        ("EVENT_METRICS_BACKEND", "mysql"),
        ("EVENT_METRICS_REPLICATE", "maybe"),
        ("EVENT_METRICS_FLUSH_INTERVAL_MS", "-1"),
    ],
)
def test_invalid_setting_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_settings_read_only_their_prefix() -> None:
    settings = Settings.from_env(
        {
            "EVENT_METRICS_PORT": "9001",
            "EVENT_METRICS_REPLICATE": "false",
            "EVENT_METRICS_REQUIRE_SERVICES": "1",
            "PORT": "abc",
        }
    )
    assert (settings.http.port, settings.replication.enabled) == (9001, False)


def test_renamed_variables_still_accept_their_old_names() -> None:
    old = Settings.from_env(
        {"EVENT_METRICS_MAX_BATCH_EVENTS": "7", "EVENT_METRICS_BATCH_MAX_EVENTS": "9"}
    )
    new = Settings.from_env(
        {"EVENT_METRICS_MAX_EVENTS_PER_REQUEST": "7", "EVENT_METRICS_MAX_EVENTS_PER_COMMIT": "9"}
    )
    assert old == new
    assert (new.ingest.max_events_per_request, new.writer.max_events_per_commit) == (7, 9)


def test_durations_are_converted_once_to_seconds() -> None:
    settings = Settings.from_env(
        {"EVENT_METRICS_FLUSH_INTERVAL_MS": "7", "EVENT_METRICS_ACK_TIMEOUT_MS": "1500"}
    )
    assert (settings.writer.flush_interval_s, settings.ingest.ack_timeout_s) == (0.007, 1.5)


def test_cli_refuses_bad_configuration_before_starting(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    env |= {"EVENT_METRICS_PORT": "abc", "EVENT_METRICS_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "EVENT_METRICS_PORT" in done.stderr
    assert not data_dir.exists(), "the embedded PostgreSQL was started anyway"
