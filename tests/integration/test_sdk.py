"""The SDKs people already use, sending here unchanged: Segment's and RudderStack's Python
clients and PostHog's, against the real server, and the recorded browser requests
(posthog-js, analytics-next, analytics.js) replayed with a real key."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import Keys, LiveServer, live_server, wait_until

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "sdk").glob("*.json"))
RECORDED = {path.stem: json.loads(path.read_text()) for path in FIXTURES}
RECORDED_KEYS = ("phc_browser_test_token", "wk_browser_test", "wk_classic_test",
                 "wk_server_test", "phc_server_test_token")  # fmt: skip
NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = {
    "from": (NOW - timedelta(days=300)).isoformat(),
    "to": (NOW + timedelta(days=1)).isoformat(),
}


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url, ack_timeout_ms="700") as running:
        yield running


async def rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT event_name, user_id, idempotency_key, channel, properties::text AS properties "
        "FROM events ORDER BY id"
    )


async def total(server: LiveServer, keys: Keys, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(
            "/metrics", params={**WINDOW, **params}, headers=keys.default.auth("read")
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- the Python SDKs ------------------------------------------------------------------------


def send_with_segment(url: str, key: str, *, gzip_body: bool = False) -> None:
    from segment.analytics import Client

    client = Client(key, host=url, gzip=gzip_body, max_retries=5)
    client.track("u1", "Signed Up", {"plan": "pro", "seats": 3})
    client.page("u1", "Docs", "Pricing", {"path": "/pricing"})
    client.identify("u2", {"email": "u2@example.com"})
    client.track(anonymous_id="anon-3", event="Viewed", properties={"n": 1})
    client.flush()
    client.join()


def send_with_rudder(url: str, key: str) -> None:
    from rudderstack.analytics import Client

    client = Client(key, host=url, max_retries=5)  # gzip, as RudderStack sends by default
    client.track("r1", "Signed Up", {"plan": "team"})
    client.screen("r1", "Home")
    client.group("r1", "org-1", {"name": "Acme"})
    client.flush()
    client.join()


def send_with_posthog(url: str, key: str) -> None:
    from posthog import Posthog

    client = Posthog(key, host=url, max_retries=5)
    client.capture("Signed Up", distinct_id="p1", properties={"plan": "pro"})
    client.capture("$pageview", distinct_id="p1", properties={"$current_url": "https://x.test/"})
    client.set(distinct_id="p2", properties={"email": "p2@example.com"})
    client.flush()
    client.shutdown()


async def test_segment_python_sends_here_unchanged(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    await asyncio.to_thread(send_with_segment, server.url, keys.default.write)
    stored = await rows(db)
    assert [(r["event_name"], r["user_id"]) for r in stored] == [
        ("Signed Up", "u1"), ("page", "u1"), ("identify", "u2"), ("Viewed", "anon-3"),
    ]  # fmt: skip
    assert {r["channel"] for r in stored} == {"analytics-python"}
    first = json.loads(stored[0]["properties"])
    assert first["plan"] == "pro" and first["$segment"]["context"]["library"]["name"]
    page = json.loads(stored[1]["properties"])
    assert page["$segment"]["name"] == "Pricing" and page["$segment"]["category"] == "Docs"
    assert json.loads(stored[2]["properties"])["$segment"]["traits"]["email"]
    assert keys.default.write not in "".join(r["properties"] for r in stored)
    assert (await total(server, keys))["total"] == {"events": 4, "unique_users": 3}


async def test_rudderstack_python_sends_gzip_here_unchanged(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    await asyncio.to_thread(send_with_rudder, server.url, keys.default.write)
    stored = await rows(db)
    assert [(r["event_name"], r["user_id"]) for r in stored] == [
        ("Signed Up", "r1"), ("screen", "r1"), ("group", "r1"),
    ]  # fmt: skip
    assert {r["channel"] for r in stored} == {"server"}  # RudderStack's own channel field


async def test_posthog_python_sends_here_unchanged(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    await asyncio.to_thread(send_with_posthog, server.url, keys.default.write)
    stored = await rows(db)
    assert [(r["event_name"], r["user_id"]) for r in stored] == [
        ("Signed Up", "p1"), ("$pageview", "p1"), ("$set", "p2"),
    ]  # fmt: skip
    assert {r["channel"] for r in stored} == {"posthog-python"}
    person = json.loads(stored[2]["properties"])
    assert person["$set"] == {"email": "p2@example.com"}
    assert all(uuid.UUID(r["idempotency_key"]) for r in stored)
    by_event = await total(server, keys, group_by="event_name")
    assert {r["event_name"]: r["events"] for r in by_event["series"]} == {
        "Signed Up": 1, "$pageview": 1, "$set": 1,
    }  # fmt: skip


@pytest.mark.parametrize("sender", [send_with_segment, send_with_rudder, send_with_posthog])
async def test_a_retry_after_a_503_is_counted_once(
    server: LiveServer, db: asyncpg.Connection, database_url: str, keys: Keys, sender: Any
) -> None:
    # Commits stall while the table is locked: the first attempt times out (503, the
    # events still commit later), the SDK retries with the same message ids.
    locker = await asyncpg.connect(database_url)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        sending = asyncio.create_task(asyncio.to_thread(sender, server.url, keys.default.write))
        await asyncio.sleep(1.5)  # long enough for a 503 (ACK_TIMEOUT_MS=700)
        await transaction.rollback()
        await sending
    finally:
        await locker.close()
    stored = await rows(db)
    keys_seen = [r["idempotency_key"] for r in stored]
    assert len(keys_seen) == len(set(keys_seen)) >= 3
    counted = (await total(server, keys))["total"]["events"]
    assert counted == len(stored)


# --- answers the SDKs understand --------------------------------------------------------------


async def test_invalid_messages_are_listed_and_the_rest_stored_with_a_200(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    batch = [
        {"type": "track", "event": "ok", "userId": "u", "messageId": "a"},
        {"type": "track", "userId": "u", "messageId": "b"},  # no event name
        {"type": "track", "event": "ok", "messageId": "c"},  # no user
    ]
    async with httpx.AsyncClient(base_url=server.url) as client:
        before = (await client.get("/health")).json()["rejected_events"]
        response = await client.post(
            "/v1/batch", json={"batch": batch, "writeKey": keys.default.write}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True and body["accepted"] == 1
        assert [r["index"] for r in body["rejected"]] == [1, 2]
        ph = await client.post(
            "/batch/",
            json={"api_key": keys.default.write, "batch": [{"event": "x", "uuid": "u1"}]},
        )
        assert ph.status_code == 200
        assert ph.json()["status"] == 1 and ph.json()["rejected"][0]["index"] == 0
        after = (await client.get("/health")).json()["rejected_events"]
    # The SDKs got 200s and show no one the rejections: /health counts them.
    assert after["segment"] - before["segment"] == 2
    assert after["posthog"] - before["posthog"] == 1
    assert [r["idempotency_key"] for r in await rows(db)] == ["a"]


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/batch", {"batch": []}, {}),
        ("/v1/batch", {"batch": [], "writeKey": "emw_" + "x" * 32}, {}),
        ("/batch/", {"batch": [], "api_key": "nope"}, {}),
        ("/e/", [{"event": "e", "properties": {"token": "emw_" + "y" * 32}}], {}),
    ],
)
async def test_a_missing_or_bad_key_is_a_final_401_with_code_and_message(
    server: LiveServer, db: asyncpg.Connection, path: str, body: Any, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 401
    answer = response.json()
    assert answer["code"] == answer["error"] and answer["message"]  # RudderStack gives up
    assert await rows(db) == []


async def test_a_read_key_may_not_send(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/capture/", json={"api_key": keys.default.read, "event": "e", "distinct_id": "d"}
        )
    assert response.status_code == 403


# --- recorded browser requests ---------------------------------------------------------------


def reencode(recorded: dict[str, Any], key: str) -> tuple[bytes, dict[str, str]]:
    """The recorded request with its key swapped for ours, in the same encoding."""
    text = json.dumps(recorded["decoded_json"])
    for old in RECORDED_KEYS:
        text = text.replace(old, key)
    payload = text.encode()
    headers = dict(recorded["headers"])
    steps = " ".join(recorded["decode_steps"] or [])
    if "gunzip" in steps or recorded["scenario"] == "encoding_gzip-js":
        payload = gzip.compress(payload, mtime=0)
    elif headers.get("Content-Type") == "application/x-www-form-urlencoded":
        payload = b"data=" + urllib.parse.quote(base64.b64encode(payload)).encode()
    if "Authorization" in headers:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    return payload, headers


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_recorded_browser_requests_are_stored(
    server: LiveServer, db: asyncpg.Connection, keys: Keys, path: Path
) -> None:
    recorded = RECORDED[path.stem]
    body, headers = reencode(recorded, keys.default.write)
    url = recorded["path"] + (f"?{recorded['query']}" if recorded["query"] else "")
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer.get("rejected") == [], answer
        again = await client.post(url, content=body, headers=headers)  # a retry: no new rows
        assert again.json()["accepted"] == 0
    stored = await rows(db)
    assert len(stored) == answer["accepted"] >= 1
    text = json.dumps([dict(r) for r in stored])
    assert keys.default.write not in text


async def test_cors_preflight_for_analytics_next(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        preflight = await client.options(
            "/v1/t",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )  # fmt: skip
    assert preflight.status_code == 204
    assert "authorization" in preflight.headers["access-control-allow-headers"]


async def test_everything_is_counted_in_metrics(
    server: LiveServer, keys: Keys, db: asyncpg.Connection
) -> None:
    await asyncio.to_thread(send_with_posthog, server.url, keys.default.write)

    async def counted() -> bool:
        return bool((await total(server, keys))["total"]["events"] == 3)

    await wait_until(counted, what="the events counted")
