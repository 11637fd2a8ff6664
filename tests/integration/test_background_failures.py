"""Background work never fails silently: every failure is retried, logged once per change
of state, and shown in /health, and the loop carries on when the cause goes away."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from clickhouse_driver import Client
from test_replication import clickhouse_keys, postgres_keys

from conftest import ClientFactory, wait_until
from event_metrics.replicator import PARTITION


def event(key: str, ts: datetime | None = None) -> dict[str, Any]:
    moment = ts or datetime.now(UTC)
    return {"event_name": "e", "user_id": "u", "idempotency_key": key,
            "timestamp": moment.isoformat()}  # fmt: skip


async def health(client: Any) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/health")).json()
    return body


def warnings_from(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


WRONG_TABLE = (
    "CREATE TABLE events (project_id UInt32, id UInt64, idempotency_key String, event_name String, "
    "user_id String, channel String, ts String, received_at DateTime('UTC'), "
    "properties String) ENGINE = MergeTree() ORDER BY id"
)


async def test_a_clickhouse_table_the_replicator_cannot_write_is_retried_and_shown(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    clickhouse_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="event_metrics")
    ch = Client.from_url(clickhouse_url)
    try:
        async with make_client(
            clickhouse_url=clickhouse_url,
            replication_interval_ms=20,
            replication_retry_max_ms=100,
        ) as client:
            assert (await client.post("/events", json=event("a"))).status_code == 200
            await wait_until(lambda: clickhouse_keys(clickhouse_url) == {"a"}, what="first copy")

            # Someone replaced the table with one whose ts is text: every insert fails.
            ch.execute("DROP TABLE events")
            ch.execute(WRONG_TABLE)
            assert (await client.post("/events", json=event("b"))).status_code == 200

            async def failing() -> bool:
                part = (await health(client))["replication"]
                # The lag is measured beside the loop, at once when it fails.
                return bool(part["state"] == "failing" and part["lag_rows"] == 1)

            await wait_until(failing, what="replicator reported failing, one row behind")
            body = await health(client)
            assert body["status"] == "degraded"
            assert body["replication"]["last_error"]
            assert body["replication"]["lag_rows"] == 1
            # Several retries, one warning: logged when the state changed, not per attempt.
            await wait_until(
                lambda: client.app.state.services.replicator.loop_state.failures >= 4,
                what="retries",
            )
            assert len(warnings_from(caplog, "replicator is failing")) == 1

            ch.execute("DROP TABLE events")  # the replicator creates it again on its next try

            async def recovered() -> bool:
                return clickhouse_keys(clickhouse_url) == await postgres_keys(db) - {"a"}

            await wait_until(recovered, what="replication after the table came back")

            async def healthy() -> bool:
                return bool((await health(client))["status"] == "ok")

            # ClickHouse shows the rows a moment before the replicator has saved its
            # checkpoint and said it is running again: wait for that, not just the rows.
            await wait_until(healthy, what="/health ok after the recovery")
            body = await health(client)
            assert body["status"] == "ok"
            assert body["replication"]["state"] == "running"
            assert body["replication"]["last_error"] is None
            assert any("replicator recovered" in r.getMessage() for r in caplog.records)
    finally:
        ch.disconnect()


async def test_a_dropped_clickhouse_column_is_added_back(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    clickhouse_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The review's repro: once a permanent failure that stopped replication for good.
    caplog.set_level(logging.INFO, logger="event_metrics")
    ch = Client.from_url(clickhouse_url)
    try:
        async with make_client(
            clickhouse_url=clickhouse_url,
            replication_interval_ms=20,
            replication_retry_max_ms=100,
        ) as client:
            assert (await client.post("/events", json=event("a"))).status_code == 200
            await wait_until(lambda: clickhouse_keys(clickhouse_url) == {"a"}, what="first copy")
            ch.execute("ALTER TABLE events DROP COLUMN properties")
            assert (await client.post("/events", json=event("b"))).status_code == 200

            async def both() -> bool:
                return clickhouse_keys(clickhouse_url) == await postgres_keys(db)

            await wait_until(both, what="replication after the column is added back")
            assert warnings_from(caplog, "replicator is failing")
            assert any("column properties added" in r.getMessage() for r in caplog.records)

            async def healthy() -> bool:
                body = await health(client)
                return (body["status"], body["replication"]["state"]) == ("ok", "running")

            # The rows show in ClickHouse a moment before the checkpoint is saved and the
            # replicator says it is running again (as in the test above).
            await wait_until(healthy, what="/health ok after the column came back")
    finally:
        ch.disconnect()


async def test_an_insert_spanning_many_months_is_replicated(
    make_client: ClientFactory, db: asyncpg.Connection, clickhouse_url: str
) -> None:
    # Current ClickHouse refuses one insert that touches more than 100 monthly partitions
    # (tests/test_clickhouse_dialect.py shows it on chdb); the replicator splits by month.
    start = datetime(2015, 1, 15, tzinfo=UTC)
    events = [event(f"m{n}", start + timedelta(days=31 * n)) for n in range(101)]
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=20) as client:
        assert (await client.post("/events", json=events)).status_code == 200
        expected = await postgres_keys(db)
        assert len(expected) == 101
        await wait_until(lambda: clickhouse_keys(clickhouse_url) == expected, what="copy")


async def test_times_and_partitions_reach_clickhouse_exactly(
    make_client: ClientFactory, db: asyncpg.Connection, clickhouse_url: str
) -> None:
    # The replicator sends times as whole epoch seconds and groups rows by a month that
    # PostgreSQL computes: both must agree with ClickHouse's own DateTime and toYYYYMM(ts),
    # at a month's last second, its first, and across a year.
    moments = ["2025-12-31T23:59:59.999Z", "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z",
               "2026-02-01T00:30:00+01:00", "2026-02-28T23:00:00-02:00",
               "1970-01-01T00:00:01Z"]  # fmt: skip
    events = [{**event(f"t{n}"), "timestamp": moment} for n, moment in enumerate(moments)]
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=20) as client:
        assert (await client.post("/events", json=events)).status_code == 200
        rows = await db.fetch(
            f"SELECT idempotency_key, floor(extract(epoch FROM ts))::bigint, {PARTITION} "
            "FROM events"
        )
        expected = {key: (ts, month) for key, ts, month in rows}
        ch = Client.from_url(clickhouse_url)
        try:

            def mirrored() -> dict[str, tuple[int, int]]:
                if not ch.execute("EXISTS TABLE events")[0][0]:  # the replicator creates it
                    return {}
                found = ch.execute(
                    "SELECT idempotency_key, toUInt32(ts), toYYYYMM(ts) FROM events FINAL"
                )
                return {key: (ts, month) for key, ts, month in found}

            await wait_until(lambda: mirrored() == expected, what="exact copy")
        finally:
            ch.disconnect()
    assert expected["t1"] == (1767225600, 202601)
    assert expected["t3"][1] == 202601  # 00:30 at +01:00 is still January in UTC


async def test_rollup_refresher_failure_is_retried_and_shown(
    make_client: ClientFactory, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_metrics")
    async with make_client(rollup_interval_ms=20, rollup_retry_max_ms=100) as client:
        await db.execute("ALTER TABLE rollups RENAME TO rollups_away")
        try:
            assert (await client.post("/events", json=event("a"))).status_code == 200

            async def failing() -> bool:
                part = (await health(client))["rollups"]
                return bool(part["state"] == "failing" and part["lag_rows"] == 1)

            await wait_until(failing, what="refresher reported failing, one row behind")
            body = await health(client)
            assert body["status"] == "degraded"
            assert "rollups" in body["rollups"]["last_error"]
            assert body["rollups"]["lag_rows"] == 1
        finally:
            await db.execute("ALTER TABLE rollups_away RENAME TO rollups")

        async def folded() -> bool:
            return bool((await health(client))["rollups"]["rows_folded"] == 1)

        await wait_until(folded, what="refresher caught up")
        body = await health(client)
        assert (body["status"], body["rollups"]["state"]) == ("ok", "running")
        assert len(warnings_from(caplog, "rollup refresher is failing")) == 1


async def test_stalled_commits_make_health_unavailable(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="event_metrics")
    locker = await asyncpg.connect(database_url)
    try:
        async with make_client(writer_stall_ms=200) as client:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            try:
                response = await client.post("/events", json=event("a"), params={"wait": "false"})
                assert response.status_code == 202

                async def stalled() -> bool:
                    return bool((await health(client))["writers"]["state"] == "stalled")

                await wait_until(stalled, what="writers reported stalled")
                response = await client.get("/health")
                assert response.status_code == 503
                body = response.json()
                assert body["status"] == "unavailable"
                assert body["writers"]["batches_in_flight"] == 1
                assert body["writers"]["oldest_in_flight_s"] >= 0.2
                # Logged once, however often it is seen (by /health or by the watcher).
                await wait_until(lambda: stall_lines(caplog, "stalled:"), what="stall logged")
                for _ in range(5):
                    assert (await health(client))["writers"]["state"] == "stalled"
                assert len(stall_lines(caplog, "stalled:")) == 1
                assert len(warnings_from(caplog, "writers are stalled")) == 1
            finally:
                await transaction.rollback()

            async def committed() -> bool:
                return bool((await health(client))["rows_written"] == 1)

            await wait_until(committed, what="the commit after the lock went away")
            body = await health(client)
            assert (body["status"], body["writers"]["state"]) == ("ok", "running")
            await wait_until(lambda: stall_lines(caplog, "no longer"), what="recovery logged")
            assert len(stall_lines(caplog, "no longer")) == 1
            assert len(stall_lines(caplog, "stalled:")) == 1
    finally:
        await locker.close()


def stall_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "event_metrics.writer"
        and "stalled" in r.getMessage()
        and text in r.getMessage()
    ]
