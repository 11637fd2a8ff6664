"""Fixtures: a throwaway PostgreSQL database per test session, and the app around it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from event_metrics.app import create_app
from event_metrics.migrations import upgrade_head
from event_metrics.settings import Settings

ADMIN_URL = os.environ.get(
    "EVENT_METRICS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("EVENT_METRICS_REQUIRE_SERVICES") == "1"


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


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before the test."""
    connection = await asyncpg.connect(database_url)
    await connection.execute("TRUNCATE events, replication_state RESTART IDENTITY")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str, db: asyncpg.Connection) -> Settings:
    return Settings(database_url=database_url)


ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[AsyncTestClient[Any]]]


@pytest.fixture
def make_client(settings: Settings) -> ClientFactory:
    """Run the real app (lifespan included) with settings overridden per test."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[AsyncTestClient[Any]]:
        app = create_app(msgspec.structs.replace(settings, **overrides))
        async with AsyncTestClient(app=app, timeout=60) as client:
            yield client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[AsyncTestClient[Any]]:
    async with make_client() as client:
        yield client


async def stored_keys(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT idempotency_key FROM events ORDER BY id")]


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll a condition (never a fixed sleep) until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
