"""GET /internal/metrics on a running service: the counters move with the work, agree with
/health and with the database, and add up across HTTP worker processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ClientFactory, Keys, LiveServer, free_port, live_server, wait_until
from event_metrics import telemetry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels (pid labels dropped)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            found[(sample.name, labels)] = found.get((sample.name, labels), 0.0) + sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[Any, float]:
    response = await client.get("/internal/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def event(name: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"event_name": name, "user_id": "u", "idempotency_key": key or uuid.uuid4().hex,
            **extra}  # fmt: skip


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    # A ClickHouse nobody listens on: the replicator fails and retries, visibly.
    dead = f"clickhouse://default@127.0.0.1:{free_port()}/default"
    with live_server(database_url, clickhouse_url=dead, replication_retry_max_ms="200") as running:
        yield running


async def test_counters_agree_with_health_and_the_database(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=keys.default.auth()) as client:
        before = await scrape(client)
        health_before = (await client.get("/health")).json()
        ok = await client.post("/events", json=[event("a", "k1"), event("a", "k2")])
        assert ok.status_code == 200
        again = await client.post("/events", json=[event("a", "k1"), event("a", "k3")])
        assert again.json()["duplicates"] == 1
        bad = await client.post(
            "/events",
            json=[event("a"), {"event_name": "a"}, event("a", timestamp="1960-01-01T00:00:00Z")],
        )
        assert bad.status_code == 400 and bad.json()["rejected"] == 2
        sdk = await client.post(
            "/v1/batch",
            json={"batch": [{"type": "track", "event": "s", "userId": "u", "messageId": "m1"},
                            {"type": "track", "userId": "u", "messageId": "m2"}]},
        )  # fmt: skip
        assert sdk.status_code == 200
        read = await client.get(
            "/metrics",
            params={"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
            headers=keys.default.auth("read"),
        )
        assert read.status_code == 200
        after = await scrape(client)
        health = (await client.get("/health")).json()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stored = await db.fetchval("SELECT count(*) FROM events")
    accepted = moved("event_metrics_events_total", protocol="native", outcome="accepted")
    accepted += moved("event_metrics_events_total", protocol="segment", outcome="accepted")
    assert accepted == stored == 5  # k1 k2 k3, one good event of the bad batch, m1
    assert health["rows_written"] - health_before["rows_written"] == stored
    assert moved("event_metrics_events_total", protocol="native", outcome="duplicate") == 1
    assert moved("event_metrics_events_rejected_total", protocol="native",
                 reason="invalid_field") == 1  # fmt: skip
    assert moved("event_metrics_events_rejected_total", protocol="native",
                 reason="bad_timestamp") == 1  # fmt: skip
    assert moved("event_metrics_events_rejected_total", protocol="segment",
                 reason="invalid_field") == 1  # fmt: skip
    assert moved("event_metrics_http_requests_total", route="/events", status="200") == 2
    assert moved("event_metrics_http_requests_total", route="/events", status="400") == 1
    assert moved("event_metrics_http_requests_total", route="/v1/batch", status="200") == 1
    commits = moved("event_metrics_writer_commits_total")
    assert commits == health["writers"]["commits"] - health_before["writers"]["commits"] >= 3
    assert moved("event_metrics_writer_commit_rows_count") == commits
    assert moved("event_metrics_writer_commit_rows_sum") == 2 + 2 + 1 + 1  # rows sent
    assert moved("event_metrics_ingest_ack_seconds_count") == 4  # one per request
    plan = read.headers["x-metrics-plan"]
    assert moved("event_metrics_query_seconds_count", backend="postgres", plan=plan) == 1
    assert value(after, "event_metrics_queue_capacity_events") == health["queue_capacity"]
    assert value(after, "event_metrics_loop_state", loop="writers", state="running") == 1


async def test_a_failing_loop_shows_its_state_and_its_retries(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:

        async def retried() -> bool:
            found = await scrape(client)
            return bool(
                value(found, "event_metrics_loop_state", loop="replicator", state="failing") == 1
                and value(found, "event_metrics_retries_total", loop="replicator") >= 2
            )

        await wait_until(retried, what="the replicator's failures counted")
        assert (await client.get("/health")).json()["replication"]["state"] == "failing"


async def test_the_gauges_worker_retries_and_shows_its_state_in_health(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gauge loop that died on an error once left the gauges frozen and nothing said so.
    calls: list[int] = []
    working = telemetry.refresh

    def broken(readings: telemetry.Readings) -> None:
        calls.append(1)
        raise RuntimeError("gauges broke")

    async with make_client(telemetry_gauge_interval_ms=20, telemetry_retry_max_ms=50) as client:

        async def state() -> dict[str, Any]:
            part: dict[str, Any] = (await client.get("/health")).json()["telemetry"]
            return part

        await wait_until(lambda: _is(state(), "running"), what="gauges running")
        monkeypatch.setattr(telemetry, "refresh", broken)
        await wait_until(lambda: _is(state(), "failing"), what="gauges failing")
        assert (await state())["last_error"] == "RuntimeError: gauges broke"
        await wait_until(lambda: len(calls) >= 3, what="retries")  # it did not die
        monkeypatch.setattr(telemetry, "refresh", working)
        await wait_until(lambda: _is(state(), "running"), what="gauges running again")


async def _is(part: Any, state: str) -> bool:
    return bool((await part)["state"] == state)


async def test_several_workers_add_up(
    database_url: str, db: asyncpg.Connection, keys: Keys
) -> None:
    with live_server(database_url, http_workers="2", replicate="false") as running:
        # Many connections, so that both processes take requests.
        async def send(n: int) -> None:
            async with httpx.AsyncClient(base_url=running.url, headers=keys.default.auth()) as c:
                response = await c.post("/events", json=[event("w") for _ in range(5)])
                assert response.status_code == 200, n

        await asyncio.gather(*(send(n) for n in range(40)))
        stored = await db.fetchval("SELECT count(*) FROM events")
        assert stored == 200

        async def accepted() -> float:
            async with httpx.AsyncClient(base_url=running.url) as client:
                found = await scrape(client)
            return value(found, "event_metrics_events_total", protocol="native",
                         outcome="accepted")  # fmt: skip

        # A process adds its tallies once a second, and before the scrapes it answers.
        await wait_until(lambda: _equals(accepted(), 200.0), timeout_s=5, what="tallies flushed")
        seen = set()
        for _ in range(6):  # each scrape may reach either process: all must add up
            async with httpx.AsyncClient(base_url=running.url) as client:
                found = await scrape(client)
                seen.add(value(found, "event_metrics_events_total", protocol="native",
                               outcome="accepted"))  # fmt: skip
        assert seen == {200.0}


async def _equals(found: Any, expected: float) -> bool:
    return bool(await found == expected)


async def test_the_endpoint_can_be_turned_off(database_url: str) -> None:
    with live_server(database_url, prometheus="false", replicate="false") as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.get("/internal/metrics")).status_code == 404
