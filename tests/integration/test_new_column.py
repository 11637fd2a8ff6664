"""A new column is one change, end to end: a copy of the package gains `country` (the edits
in tests/new_column.py, as docs/architecture.md lists them), then `event-metrics serve`
from that copy stores events sent with it through HTTP (single events by unnest, a batch
by COPY), replicates them to ClickHouse, folds them into rollups, and answers /metrics
grouped by it from every engine and plan."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clickhouse_driver import Client

from conftest import ADMIN_URL, SECRETS, LiveServer, wait_until
from event_metrics import projects
from new_column import copy_package

COUNTRIES = ("de", "fr", None)  # None: sent without one, stored as ''
CHANNELS = ("web", "ios")


@contextlib.asynccontextmanager
async def own_database() -> AsyncIterator[str]:
    """A database of this test's own: the copy's schema is not the session database's."""
    admin = await asyncpg.connect(ADMIN_URL)
    name = f"event_metrics_column_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def events(start: datetime) -> list[dict[str, Any]]:
    """Events over two days, each country with its own users and channels."""
    sent = []
    for n in range(60):
        event: dict[str, Any] = {
            "event_name": "view",
            "user_id": f"u-{n % 7}",
            "channel": CHANNELS[n % 2],
            "timestamp": (start + timedelta(minutes=47 * n)).isoformat(),
            "idempotency_key": f"column-{n}",
        }
        if COUNTRIES[n % 3] is not None:
            event["country"] = COUNTRIES[n % 3]
        sent.append(event)
    return sent


def oracle(sent: list[dict[str, Any]], by: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    """Per UTC day and `by` values: [events, unique users], from the events themselves."""
    cells: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for event in sent:
        day = datetime.fromisoformat(event["timestamp"]).date().isoformat()
        cells[(day, *(event.get(name) for name in by))].append(event["user_id"])
    return {key: [len(users), len(set(users))] for key, users in cells.items()}


def answered(body: dict[str, Any], by: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    return {
        (row["bucket_start"][:10], *(row[name] for name in by)): [
            row["events"],
            row["unique_users"],
        ]
        for row in body["series"]
    }


def clickhouse_countries(url: str) -> dict[str, str]:
    client = Client.from_url(url)
    try:
        if not client.execute("EXISTS TABLE events")[0][0]:
            return {}
        return dict(client.execute("SELECT idempotency_key, country FROM events FINAL"))
    finally:
        client.disconnect()


async def test_a_new_column_is_stored_replicated_and_grouped_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clickhouse_url: str
) -> None:
    source = copy_package(tmp_path)
    # The copy's migrations: alembic.ini is looked for in the working directory first.
    monkeypatch.chdir(tmp_path)
    async with own_database() as database_url:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source),
               "EVENT_METRICS_DATABASE_URL": database_url}  # fmt: skip
        migrated = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "event_metrics.cli", "migrate"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        connection = await asyncpg.connect(database_url)
        try:
            write = await projects.create_key(connection, "default", "write")
            read = await projects.create_key(connection, "default", "read")
        finally:
            await connection.close()
        SECRETS.update((write.key, read.key))
        server = LiveServer(
            database_url, clickhouse_url=clickhouse_url, copy_min_rows="20",
            rollup_interval_ms="100", replication_interval_ms="100",
        )  # fmt: skip
        server.env["PYTHONPATH"] = str(source)
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
        sent = events(start)
        try:
            server.start()
            auth = {"Authorization": f"Bearer {write.key}"}
            async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as client:
                for event in sent[:5]:  # one by one: the unnest path
                    response = await client.post("/events", json=event)
                    assert response.status_code == 200, response.text
                response = await client.post("/events", json=sent[5:])  # COPY
                assert response.status_code == 200, response.text
                assert response.json()["accepted"] == len(sent) - 5

                stored = {key: country for key, country in await _stored(database_url)}
                expected = {e["idempotency_key"]: e.get("country", "") for e in sent}
                assert stored == expected
                await wait_until(
                    lambda: clickhouse_countries(clickhouse_url) == expected,
                    timeout_s=60, what="the rows, with their country, in ClickHouse",
                )  # fmt: skip

                async def folded() -> bool:
                    health = (await client.get("/health")).json()
                    return bool(health["rollups"]["rows_folded"] == len(sent))

                await wait_until(folded, timeout_s=60, what="every event folded into rollups")
                window = {"from": start.isoformat(), "to": (start + timedelta(days=3)).isoformat(),
                          "granularity": "day"}  # fmt: skip
                client.headers["Authorization"] = f"Bearer {read.key}"
                for by in (("country",), ("country", "channel")):
                    want = oracle(sent, by)
                    for engine in ({"plan": "raw"}, {"plan": "rollup"}, {"backend": "clickhouse"}):
                        response = await client.get(
                            "/metrics", params={**window, **engine, "group_by": ",".join(by)}
                        )
                        assert response.status_code == 200, response.text
                        body = response.json()
                        assert body["freshness"]["rollup_lag_rows"] in (None, 0), engine
                        assert answered(body, by) == want, (by, engine)
        finally:
            errors = server.stop() if server.process is not None else ""
        assert "Traceback" not in errors, errors


async def _stored(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch("SELECT idempotency_key, country FROM events")
    finally:
        await connection.close()
