"""`serve` runs the replicator as a child process: it copies, it is restarted when it
dies, /health and the Prometheus gauges show it, and it never outlives serve."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from test_replication import clickhouse_keys, postgres_keys
from test_telemetry import samples, value

from conftest import Keys, LiveServer, live_server, wait_until


def replicator_children(server: LiveServer) -> list[psutil.Process]:
    assert server.process is not None
    return [
        child
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if "replicate" in child.cmdline()
    ]


async def post(server: LiveServer, keys: Keys, n: int) -> set[str]:
    sent = {f"rp-{uuid.uuid4().hex}" for _ in range(n)}
    async with httpx.AsyncClient(base_url=server.url, headers=keys.default.auth()) as client:
        body = [{"event_name": "rp", "user_id": "u", "idempotency_key": key} for key in sent]
        response = await client.post("/events", json=body)
        assert response.status_code == 200, response.text
    return sent


async def health(server: LiveServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer: dict[str, Any] = (await client.get("/health")).json()
    return answer


async def replication_is(server: LiveServer, **expected: Any) -> bool:
    part = (await health(server))["replication"]
    return all(part[name] == value for name, value in expected.items())


async def test_a_child_copies_and_is_restarted_after_it_is_killed(
    database_url: str, db: asyncpg.Connection, keys: Keys, clickhouse_url: str
) -> None:
    with live_server(database_url, clickhouse_url=clickhouse_url) as server:
        (child,) = replicator_children(server)
        first = await post(server, keys, 50)
        await wait_until(lambda: clickhouse_keys(clickhouse_url) >= first, what="rows copied")
        await wait_until(lambda: replication_is(server, state="running"), what="running")

        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        second = await post(server, keys, 50)  # ingest does not need the replicator

        def restarted() -> bool:
            children = replicator_children(server)
            return bool(children) and children[0].pid != child.pid

        await wait_until(restarted, timeout_s=15, what="a new replicator process")
        await wait_until(
            lambda: clickhouse_keys(clickhouse_url) == first | second, what="all rows copied"
        )
        assert clickhouse_keys(clickhouse_url) == await postgres_keys(db)
        await wait_until(
            lambda: replication_is(server, state="running", lag_rows=0),
            what="health shows the new child caught up",
        )
        (new_child,) = replicator_children(server)
    new_child.wait(10)  # stopped with serve (SIGTERM)
    assert not new_child.is_running()


async def test_a_failing_child_shows_in_health_and_its_retries_are_counted(
    database_url: str, db: asyncpg.Connection, keys: Keys, clickhouse_url: str
) -> None:
    broken = clickhouse_url.rsplit("/", 1)[0] + "/no_such_database"
    with live_server(database_url, clickhouse_url=broken, replication_retry_max_ms="200") as server:
        await post(server, keys, 3)

        await wait_until(
            lambda: replication_is(server, state="failing", lag_rows=3),
            what="the child's failure and lag in /health",
        )
        answer = await health(server)
        assert answer["status"] == "degraded"
        assert "no_such_database" in answer["replication"]["last_error"]
        async with httpx.AsyncClient(base_url=server.url) as client:
            scraped = samples((await client.get("/internal/metrics")).text)
        # Counted in the child, added up from the shared files by the worker that answers.
        assert value(scraped, "event_metrics_retries_total", loop="replicator") >= 1
        assert value(scraped, "event_metrics_loop_state", loop="replicator", state="failing") == 1


async def test_a_child_dies_with_serve_even_on_sigkill(
    database_url: str, db: asyncpg.Connection, clickhouse_url: str
) -> None:
    with live_server(database_url, clickhouse_url=clickhouse_url) as server:
        (child,) = replicator_children(server)
        assert server.process is not None
        server.process.kill()
        child.wait(10)
        assert not child.is_running()


async def test_replicator_process_false_keeps_it_in_the_worker(
    database_url: str, db: asyncpg.Connection, keys: Keys, clickhouse_url: str
) -> None:
    with live_server(database_url, clickhouse_url=clickhouse_url,
                     replicator_process="false") as server:  # fmt: skip
        assert replicator_children(server) == []
        sent = await post(server, keys, 20)
        await wait_until(lambda: clickhouse_keys(clickhouse_url) == sent, what="rows copied")
        assert await replication_is(server, state="running")


async def test_with_chdb_serve_replicates_inside_its_own_process(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    """`make serve` with no ClickHouse server: the mirror is chdb in serve's process, the
    replicator a task beside the HTTP worker (the directory admits one process), and
    /metrics answers from it what PostgreSQL answers."""
    url = f"chdb://{tmp_path / 'mirror'}"
    # Loading chdb's engine (a large library) adds seconds to the start on a busy machine.
    with live_server(database_url, start_timeout_s=120, clickhouse_url=url) as server:
        assert replicator_children(server) == []
        sent = await post(server, keys, 200)
        await wait_until(
            lambda: replication_is(server, state="running", lag_rows=0, rows_copied=200),
            what="the in-process replicator caught up",
        )
        async with httpx.AsyncClient(
            base_url=server.url, headers=keys.default.auth("read")
        ) as client:
            now = datetime.now(UTC).replace(microsecond=0)
            day = timedelta(days=1)
            window = {"from": (now - day).isoformat(), "to": (now + day).isoformat(),
                      "granularity": "total"}  # fmt: skip
            answers = [
                (await client.get("/metrics", params={**window, "backend": backend})).json()
                for backend in ("clickhouse", "postgres")
            ]
        assert answers[0]["backend"] == "clickhouse"
        assert answers[0]["total"] == answers[1]["total"] == {"events": 200, "unique_users": 1}
    assert clickhouse_keys(url) == sent == await postgres_keys(db)
