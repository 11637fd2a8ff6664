"""GET /events/names: the event names of a window with their counts, from either engine,
equal to /metrics grouped by event_name."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg
from test_backends import caught_up, generate_events, post_all

from conftest import ClientFactory, Keys, wait_until

WINDOW = {"from": "2026-10-25T00:00:00Z", "to": "2026-11-08T00:00:00Z"}
PART = {"from": "2026-10-28T06:00:00Z", "to": "2026-11-02T18:30:00Z"}


def expected_names(events: list[dict[str, Any]], window: dict[str, str]) -> list[dict[str, Any]]:
    """The oracle: names, counts and distinct users of the stored events (each key once),
    most events first."""
    start, end = (datetime.fromisoformat(window[k]) for k in ("from", "to"))
    stored = {e["idempotency_key"]: e for e in events}.values()
    inside = [e for e in stored if start <= datetime.fromisoformat(e["timestamp"]) < end]
    counts = Counter(e["event_name"] for e in inside)
    users = {name: {e["user_id"] for e in inside if e["event_name"] == name} for name in counts}
    names = [
        {"event_name": name, "events": count, "unique_users": len(users[name])}
        for name, count in counts.items()
    ]
    return sorted(names, key=lambda n: (-n["events"], n["event_name"]))


async def test_names_equal_the_oracle_and_metrics_on_both_engines(
    make_client: ClientFactory, db: asyncpg.Connection, clickhouse_url: str, keys: Keys
) -> None:
    events = generate_events(seed=26, count=1500)
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=50) as client:
        await post_all(client, events)
        await wait_until(lambda: caught_up(db, clickhouse_url), what="replication")
        for window in (WINDOW, PART):
            oracle = expected_names(events, window)
            for backend in ("postgres", "clickhouse"):
                response = await client.get(
                    "/events/names",
                    params={**window, "backend": backend},
                    headers=keys.default.auth("read"),
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["backend"] == backend
                assert body["names"] == oracle, (backend, window)
                assert response.headers["X-Metrics-Plan"] == body["freshness"]["source"]
                grouped = await client.get(
                    "/metrics", params={**window, "group_by": "event_name", "backend": backend}
                )
                by_metrics = {r["event_name"]: r["events"] for r in grouped.json()["series"]}
                assert by_metrics == {n["event_name"]: n["events"] for n in body["names"]}


async def test_names_are_per_project_and_need_a_read_key(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client() as client:
        response = await client.post(
            "/events",
            json=[
                {"event_name": "signup", "user_id": "u1", "timestamp": "2026-11-01T10:00:00Z"},
                {"event_name": "signup", "user_id": "u2", "timestamp": "2026-11-01T11:00:00Z"},
                {"event_name": "login", "user_id": "u1", "timestamp": "2026-11-01T12:00:00Z"},
            ],
        )
        assert response.status_code == 200, response.text
        read = keys.default.auth("read")
        answer = await client.get("/events/names", params=WINDOW, headers=read)
        assert answer.json()["names"] == [
            {"event_name": "signup", "events": 2, "unique_users": 2},
            {"event_name": "login", "events": 1, "unique_users": 1},
        ]
        other = await client.get("/events/names", params=WINDOW, headers=keys.other.auth("read"))
        assert other.status_code == 200 and other.json()["names"] == []

        write = await client.get("/events/names", params=WINDOW, headers=keys.default.auth())
        assert write.status_code == 403
        assert write.json()["error"] == "wrong_scope"
        bare = await client.get("/events/names", params=WINDOW, headers={"Authorization": ""})
        assert bare.status_code == 401

        backwards = await client.get(
            "/events/names", params={"from": WINDOW["to"], "to": WINDOW["from"]}, headers=read
        )
        assert backwards.status_code == 400
        assert backwards.json()["parameter"] == "to"
        missing = await client.get("/events/names", params={"to": WINDOW["to"]}, headers=read)
        assert missing.status_code == 400 and missing.json()["parameter"] == "from"
        no_clickhouse = await client.get(
            "/events/names", params={**WINDOW, "backend": "clickhouse"}, headers=read
        )
        assert no_clickhouse.status_code == 400
        assert no_clickhouse.json()["parameter"] == "backend"
