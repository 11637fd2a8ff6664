"""Fuzzing the whole POST /events path against the real app and database (hypothesis),
and every route through the served OpenAPI schema (schemathesis). Bounded, so
`make test` stays fast."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from conftest import Keys, live_server
from event_metrics.app import create_app
from event_metrics.settings import Settings
from strategies import MAX_DEPTH, bodies

# --- the whole path: no 5xx, and nothing half-written ------------------------------------------


@pytest.fixture
def sync_client(settings: Settings) -> Any:
    app = create_app(settings.updated(max_property_depth=MAX_DEPTH))
    with TestClient(app=app) as client:
        yield client


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies(), gzipped=st.booleans())
def test_posted_bodies_never_get_5xx_and_store_exactly_what_was_accepted(
    sync_client: Any, database_url: str, keys: Keys, body: tuple[bytes, str], gzipped: bool
) -> None:
    raw, kind = body
    headers = {"Content-Type": kind, **keys.default.auth("write")}
    if gzipped:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    before = asyncio.run(_count(database_url))
    response = sync_client.post("/events", content=raw, headers=headers)
    assert response.status_code < 500, response.text
    stored = asyncio.run(_count(database_url)) - before
    answer = response.json()
    if "accepted" in answer:
        # Derived keys can repeat earlier examples' events: those are duplicates.
        assert stored == answer["accepted"], answer
    else:
        assert stored == 0, answer


async def _count(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM events")
        return count
    finally:
        await connection.close()


# --- every route, from the served schema ---------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "operations"),
    [("write", ["--exclude-path", "/metrics"]), ("read", ["--include-path", "/metrics"])],
)
def test_every_route_survives_schemathesis(
    database_url: str, keys: Keys, tmp_path: Path, scope: str, operations: list[str]
) -> None:
    # Each operation with the key it needs, so the fuzzing reaches past authentication.
    key = keys.default.write if scope == "write" else keys.default.read
    with live_server(database_url) as server:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"), "run",
                f"{server.url}/schema/openapi.json",
                "--header", f"Authorization: Bearer {key}",
                *operations,
                "--checks", "not_a_server_error",
                "--max-examples", "60",
                "--phases", "examples,coverage,fuzzing",
                "--generation-allow-x00", "true",
                "--seed", "20261129",
                "--workers", "1",
                "--report-dir", str(tmp_path),
                "--no-color",
            ],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
