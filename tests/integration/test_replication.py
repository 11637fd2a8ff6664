"""The replicator copies every committed row to ClickHouse, through restarts and outages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from clickhouse_driver import Client
from throwaway.clickhouse import ClickHouseServer

from conftest import ClientFactory, clickhouse_database_url, wait_until
from event_metrics import verify
from event_metrics.replicator import MIRRORED, Replicator
from event_metrics.schema import MIRRORED_COLUMNS
from event_metrics.settings import Settings

INSERT_ONE = """
INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts, received_at)
VALUES (1, $1, 'e', 'u', '', now(), now())
"""


def clickhouse_keys(url: str) -> set[str]:
    client = Client.from_url(url)
    try:
        if not client.execute("EXISTS TABLE events")[0][0]:
            return set()
        return {row[0] for row in client.execute("SELECT idempotency_key FROM events")}
    finally:
        client.disconnect()


async def postgres_keys(db: asyncpg.Connection) -> set[str]:
    return {row[0] for row in await db.fetch("SELECT idempotency_key FROM events")}


async def test_rows_committed_out_of_id_order_are_not_skipped(
    settings: Settings, db: asyncpg.Connection, clickhouse_url: str, database_url: str
) -> None:
    database = settings.database_url
    assert database is not None
    slow = await asyncpg.connect(database_url)
    fast = await asyncpg.connect(database_url)
    try:
        # The slow writer starts first: it gets the smaller id and txid but commits last.
        slow_tx = slow.transaction()
        await slow_tx.start()
        await slow.execute(INSERT_ONE, "slow")
        await fast.execute(INSERT_ONE, "fast")  # autocommit: a larger id, committed first
        ids = dict(await db.fetch("SELECT idempotency_key, id FROM events"))
        assert ids == {"fast": 2}  # "slow" (id 1) is not visible yet

        replicator = Replicator(database, clickhouse_url, settings.replication)
        await replicator.run_once()
        # "fast" waits behind the open transaction's horizon rather than being copied
        # past it (a checkpoint beyond id 1 would lose "slow" for good).
        assert clickhouse_keys(clickhouse_url) == set()

        await slow_tx.commit()

        async def both_copied() -> bool:
            # Polled: any other open transaction on the cluster also holds the horizon.
            await replicator.run_once()
            return clickhouse_keys(clickhouse_url) == {"slow", "fast"}

        await wait_until(both_copied, what="both rows replicated after the commit")
    finally:
        await slow.close()
        await fast.close()


async def test_one_active_replicator(
    settings: Settings, db: asyncpg.Connection, clickhouse_url: str
) -> None:
    settings = settings.updated(replication_interval_ms=20)
    assert settings.database_url is not None
    first, second = (
        Replicator(settings.database_url, clickhouse_url, settings.replication) for _ in "12"
    )
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:

        async def settled() -> bool:
            return sorted([first.state, second.state]) == ["running", "standby"]

        await wait_until(settled, what="one running and one standby replicator")
        await db.execute(INSERT_ONE, "a")
        await wait_until(
            lambda: clickhouse_keys(clickhouse_url) == {"a"},
            what="row replicated",
        )
        # Stop the active one: the standby takes over from the saved checkpoint.
        active, standby = (first, second) if first.state == "running" else (second, first)
        active.stop_soon()
        await wait_until(lambda: standby.state == "running", what="takeover")
        await db.execute(INSERT_ONE, "b")
        await wait_until(
            lambda: clickhouse_keys(clickhouse_url) == {"a", "b"},
            what="row replicated after takeover",
        )
    finally:
        first.stop_soon()
        second.stop_soon()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def replicate_process(
    database_url: str, clickhouse_url: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`event-metrics replicate` as a separate process, like a standalone deployment."""
    env = {
        **os.environ,
        "EVENT_METRICS_DATABASE_URL": database_url,
        "EVENT_METRICS_CLICKHOUSE_URL": clickhouse_url,
        "EVENT_METRICS_REPLICATION_INTERVAL_MS": "20",
        "EVENT_METRICS_REPLICATION_BATCH_ROWS": "50",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event_metrics.cli", "replicate",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=15)


async def insert_stream(database_url: str, prefix: str, count: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        for n in range(count):
            await connection.execute(INSERT_ONE, f"{prefix}-{n}")
            if n % 25 == 0:
                await asyncio.sleep(0.005)
    finally:
        await connection.close()


async def test_replicator_killed_mid_stream_and_restarted(
    db: asyncpg.Connection, clickhouse_url: str, database_url: str
) -> None:
    writer = asyncio.create_task(insert_stream(database_url, "k", 1500))
    async with replicate_process(database_url, clickhouse_url) as process:
        await wait_until(
            lambda: len(clickhouse_keys(clickhouse_url)) >= 100,
            what="replication under way",
        )
        process.kill()  # SIGKILL: no chance to save anything
        await process.wait()
    copied_before_restart = len(clickhouse_keys(clickhouse_url))
    assert copied_before_restart < 1500
    async with replicate_process(database_url, clickhouse_url):
        await writer

        async def complete() -> bool:
            return clickhouse_keys(clickhouse_url) == await postgres_keys(db)

        await wait_until(complete, what="replication complete after restart")
    client = Client.from_url(clickhouse_url)
    finals = client.execute("SELECT count() FROM events FINAL")[0][0]
    client.disconnect()
    assert finals == 1500


async def test_clickhouse_outage_while_events_keep_arriving(
    make_client: ClientFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    admin = Client.from_url(server.url)
    admin.execute("CREATE DATABASE outage")
    admin.disconnect()
    url = clickhouse_database_url(server, "outage")
    try:
        async with make_client(clickhouse_url=url, replication_interval_ms=20) as client:

            async def post(prefix: str, count: int) -> None:
                now = datetime.now(UTC).isoformat()
                events = [
                    {"event_name": "e", "user_id": f"u{n}", "timestamp": now,
                     "idempotency_key": f"{prefix}-{n}"}
                    for n in range(count)
                ]  # fmt: skip
                response = await client.post("/events", json=events)
                assert response.status_code == 200, response.text

            await post("before", 100)
            await wait_until(lambda: len(clickhouse_keys(url)) == 100, what="first copy")
            server.stop()
            await post("during", 200)  # ingest does not depend on ClickHouse
            metrics = await client.get(
                "/metrics",
                params={
                    "from": "2026-01-01T00:00:00Z",
                    "to": "2026-12-31T00:00:00Z",
                    "backend": "clickhouse",
                },
            )
            assert metrics.status_code == 503
            assert "ClickHouse" in metrics.json()["detail"]
            assert metrics.headers["retry-after"]

            async def retrying() -> bool:
                health: dict[str, Any] = (await client.get("/health")).json()
                return bool(health["replication"]["state"] == "failing")

            await wait_until(retrying, what="replicator noticing the outage")
            server.start()
            await post("after", 50)

            async def complete() -> bool:
                return clickhouse_keys(url) == await postgres_keys(db)

            await wait_until(complete, what="replication after ClickHouse came back")
            assert len(clickhouse_keys(url)) == 350

            async def running() -> bool:
                health: dict[str, Any] = (await client.get("/health")).json()
                return bool(health["replication"]["state"] == "running")

            # The rows reach ClickHouse a moment before the replicator says it is running.
            await wait_until(running, what="replicator running again")
    finally:
        server.stop()


def run_cli(*args: str, database_url: str, clickhouse_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVENT_METRICS_DATABASE_URL": database_url,
           "EVENT_METRICS_CLICKHOUSE_URL": clickhouse_url}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_verify_finds_a_row_deleted_from_clickhouse_and_repairs_it(
    make_client: ClientFactory, db: asyncpg.Connection, clickhouse_url: str, database_url: str
) -> None:
    events = [
        {"event_name": name, "user_id": f"u{n}", "idempotency_key": f"{name}-{n}",
         "timestamp": f"2026-0{1 + n % 3}-1{n % 9}T10:00:00Z"}
        for n in range(40) for name in ("view", "buy")
    ]  # fmt: skip
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=20) as client:
        assert (await client.post("/events", json=events)).status_code == 200
        expected = await postgres_keys(db)
        await wait_until(lambda: clickhouse_keys(clickhouse_url) == expected, what="copy")
    clean = run_cli("verify", "--json", database_url=database_url, clickhouse_url=clickhouse_url)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["differences"] == []

    ch = Client.from_url(clickhouse_url)
    try:
        ch.execute("ALTER TABLE events DELETE WHERE idempotency_key = 'buy-7'")
        # An extra row PostgreSQL never had, in a cell of its own and in a shared one.
        ch.execute(
            "INSERT INTO events (project_id, id, idempotency_key, event_name, user_id, channel, "
            "ts, received_at, properties) VALUES",
            [(1, 999, "ghost", "view", "u", "", datetime(2026, 1, 10, 10, tzinfo=UTC),
              datetime(2026, 1, 10, 10, tzinfo=UTC), "")],
        )  # fmt: skip
        await wait_until(lambda: "buy-7" not in clickhouse_keys(clickhouse_url), what="delete")
    finally:
        ch.disconnect()
    broken = run_cli("verify", "--json", database_url=database_url, clickhouse_url=clickhouse_url)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    differences = json.loads(broken.stdout)["differences"]
    assert {(d["day"], d["event_name"], d["missing"], d["extra"]) for d in differences} == {
        ("2026-02-17", "buy", 1, 0),
        ("2026-01-10", "view", 0, 1),
    }
    fixed = run_cli("verify", "--repair", database_url=database_url, clickhouse_url=clickhouse_url)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "0 cells still differ" in fixed.stdout
    assert clickhouse_keys(clickhouse_url) == await postgres_keys(db)


def clickhouse_rows(url: str) -> set[tuple[str, str, str]]:
    client = Client.from_url(url)
    try:
        rows = client.execute("SELECT idempotency_key, user_id, properties FROM events FINAL")
        return {(key, user, properties) for key, user, properties in rows}
    finally:
        client.disconnect()


async def postgres_rows(db: asyncpg.Connection) -> set[tuple[str, str, str]]:
    rows = await db.fetch(
        "SELECT idempotency_key, user_id, coalesce(properties::text, '') FROM events"
    )
    return {tuple(row) for row in rows}  # type: ignore[misc]


async def test_verify_compares_each_rows_content_and_repairs_it(
    make_client: ClientFactory, db: asyncpg.Connection, clickhouse_url: str, database_url: str
) -> None:
    events = [
        {"event_name": name, "user_id": f"u{n}", "idempotency_key": f"{name}-{n}",
         "timestamp": f"2026-0{1 + n % 3}-1{n % 9}T10:00:00Z",
         **({"properties": {"n": n, "s": "é"}} if n % 5 else {})}
        for n in range(150) for name in ("view", "buy")
    ]  # fmt: skip
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=20) as client:
        assert (await client.post("/events", json=events)).status_code == 200
        expected = await postgres_keys(db)
        await wait_until(lambda: clickhouse_keys(clickhouse_url) == expected, what="copy")
    # PostgreSQL's row checksum is md5 of the canonical text (ClickHouse's is checked
    # against the same definition in test_clickhouse_dialect.py).
    row = await db.fetchrow(
        f"SELECT {MIRRORED}, md5({verify.POSTGRES_CONTENT}) AS content FROM events "
        "WHERE idempotency_key = 'view-7'"
    )
    assert row is not None
    canonical = ",".join(
        f"{len(row[n].encode())}:{row[n]}" if isinstance(row[n], str) else str(row[n])
        for n in MIRRORED_COLUMNS
    )
    assert row["content"] == hashlib.md5(canonical.encode()).hexdigest()
    clean = run_cli("verify", "--json", database_url=database_url, clickhouse_url=clickhouse_url)
    assert json.loads(clean.stdout)["differences"] == [], clean.stdout + clean.stderr

    ch = Client.from_url(clickhouse_url)
    try:
        # The properties column lost (verify's schema step adds it back, empty), and one
        # value changed in place.
        ch.execute("ALTER TABLE events DROP COLUMN properties")
        ch.execute(
            "ALTER TABLE events UPDATE user_id = 'someone else' WHERE idempotency_key = 'buy-5'"
        )
        await wait_until(
            lambda: (
                ch.execute("SELECT count() FROM events WHERE user_id = 'someone else'") == [(1,)]
            ),
            what="the update",
        )
    finally:
        ch.disconnect()
    broken = run_cli("verify", "--json", database_url=database_url, clickhouse_url=clickhouse_url)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    differences = json.loads(broken.stdout)["differences"]
    with_properties = sum(1 for e in events if "properties" in e)
    # buy-5 has no properties (n % 5 == 0): it differs by its user only.
    assert sum(d["changed"] for d in differences) == with_properties + 1
    assert sum(d["missing"] + d["extra"] for d in differences) == 0
    assert clickhouse_rows(clickhouse_url) != await postgres_rows(db)

    fixed = run_cli("verify", "--repair", database_url=database_url, clickhouse_url=clickhouse_url)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "0 cells still differ" in fixed.stdout
    assert clickhouse_rows(clickhouse_url) == await postgres_rows(db)
    again = run_cli("verify", "--json", database_url=database_url, clickhouse_url=clickhouse_url)
    assert json.loads(again.stdout)["differences"] == []
