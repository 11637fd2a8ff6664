"""GET /export: every stored event of the window, oldest first, each line a valid
POST /events body holding what is stored; gzip on request; bad requests are 4xx JSON."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from conftest import ClientFactory, Keys
from event_metrics import export
from event_metrics.events import EventIn

BASE = datetime(2026, 10, 30, tzinfo=UTC)
STORED = """
SELECT ts, idempotency_key, event_name, user_id, channel, properties::text AS properties
FROM events WHERE project_id = $1 ORDER BY ts, id
"""


def events(seed: int, count: int) -> list[dict[str, Any]]:
    """Events with ties in time (a page boundary falls among them), sub-second times,
    offsets other than UTC, derived keys, no channel, no properties, odd properties."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n in range(count):
        moment = BASE + timedelta(seconds=rng.randrange(5 * 86400), microseconds=rng.randrange(3))
        if n % 10 == 0:
            moment = BASE + timedelta(hours=7)  # many events at one instant
        zone = rng.choice([UTC, datetime.now().astimezone().tzinfo, None])
        event: dict[str, Any] = {
            "event_name": rng.choice(["view", "buy"]),
            "user_id": f"u{rng.randrange(40)}",
            "timestamp": moment.astimezone(zone or UTC).isoformat(),
        }
        if rng.random() < 0.7:
            event["idempotency_key"] = f"x{seed}-{n}"
        if rng.random() < 0.6:
            event["channel"] = rng.choice(["web", "ios"])
        if rng.random() < 0.6:
            event["properties"] = {"n": n, "f": 1.50, "big": 12345678901234567890123, "t": "a\nb"}
        out.append(event)
    return out


def read_key(keys: Keys) -> dict[str, str]:
    # httpx asks for gzip by default; the tests that want it say so.
    return {**keys.default.auth("read"), "Accept-Encoding": "identity"}


def lines_of(body: bytes) -> list[dict[str, Any]]:
    assert body == b"" or body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


async def test_every_event_in_time_order_as_it_is_stored(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client(export_page_rows=7) as client:
        sent = events(seed=1, count=300)
        response = await client.post("/events", json=sent)
        assert response.status_code == 200, response.text
        response = await client.get("/export", headers=read_key(keys))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert "content-encoding" not in response.headers
    rows = await db.fetch(STORED, keys.default.project_id)
    body = response.content
    assert len(body.splitlines()) == len(rows) == 300
    for line, row in zip(body.splitlines(), rows, strict=True):
        msgspec.json.decode(line, type=EventIn)  # what POST /events takes, unknown fields refused
        got = json.loads(line)
        assert datetime.fromisoformat(got.pop("timestamp")) == row["ts"]
        assert got.pop("idempotency_key") == row["idempotency_key"]
        assert (got.pop("event_name"), got.pop("user_id")) == (row["event_name"], row["user_id"])
        assert got.pop("channel", "") == row["channel"]
        properties = got.pop("properties", None)
        if row["properties"] is None:
            assert properties is None
        else:  # the stored text, byte for byte, inside the line
            assert row["properties"].encode() in line
            assert properties == json.loads(row["properties"])
        assert got == {}


async def test_the_window_and_the_event_name(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client(export_page_rows=5) as client:
        assert (await client.post("/events", json=events(seed=2, count=200))).status_code == 200
        start, end = BASE + timedelta(hours=7), BASE + timedelta(days=2, seconds=1)
        params = {"from": start.isoformat(), "to": end.isoformat(), "event_name": "buy"}
        response = await client.get("/export", params=params, headers=read_key(keys))
        assert response.status_code == 200, response.text
        # Somebody else's events are never in it.
        other = await client.get("/export", headers=keys.other.auth("read"))
        assert other.status_code == 200 and other.content == b""
    expected = [
        r["idempotency_key"]
        for r in await db.fetch(STORED, keys.default.project_id)
        if start <= r["ts"] < end and r["event_name"] == "buy"
    ]
    assert expected  # the window starts at the instant many events share
    assert [line["idempotency_key"] for line in lines_of(response.content)] == expected


async def test_gzip_when_the_client_accepts_it(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client(export_page_rows=50) as client:
        assert (await client.post("/events", json=events(seed=3, count=400))).status_code == 200
        plain = await client.get("/export", headers={**read_key(keys), "Accept-Encoding": "br"})
        for accept, compressed in [("gzip", True), ("br, gzip;q=0.5", True), ("*", True),
                                   ("gzip;q=0", False), ("identity", False)]:  # fmt: skip
            response = await client.get(
                "/export", headers={**read_key(keys), "Accept-Encoding": accept}
            )
            assert response.status_code == 200
            assert response.headers.get("content-encoding") == ("gzip" if compressed else None)
            assert response.headers["vary"] == "Accept-Encoding"
            assert response.content == plain.content  # httpx gunzips
    assert len(plain.content.splitlines()) == 400


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-01T00:00:00"}, "from"),  # no offset
        ({"to": "2026-11-01T00:00:00+25:00"}, "to"),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ({"event_name": ""}, "event_name"),
        ({"event_name": "x" * 201}, "event_name"),
        ({"event_name": "a\x00b"}, "event_name"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(
    make_client: ClientFactory, keys: Keys, params: dict[str, str], parameter: str
) -> None:
    async with make_client() as client:
        response = await client.get("/export", params=params, headers=read_key(keys))
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["error"], body["parameter"]) == ("invalid_parameter", parameter)


async def test_keys(make_client: ClientFactory, keys: Keys) -> None:
    async with make_client() as client:
        assert (await client.get("/export", headers={"Authorization": ""})).status_code == 401
        write = await client.get("/export", headers=keys.default.auth("write"))
        assert write.status_code == 403
        assert write.json()["error"] == "wrong_scope"


async def test_an_offset_sent_with_an_unencoded_plus_is_read(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client() as client:
        event = {"event_name": "a", "user_id": "u", "timestamp": "2026-11-01T10:00:00+02:00"}
        assert (await client.post("/events", json=event)).status_code == 200
        # "+02:00" arrives as " 02:00" when the client does not percent-encode it.
        query = "from=2026-11-01T10:00:00+02:00&to=2026-11-01T10:00:01+02:00"
        response = await client.get(f"/export?{query}", headers=read_key(keys))
    assert response.status_code == 200, response.text
    assert len(lines_of(response.content)) == 1


async def test_at_most_max_running_exports_at_once(database_url: str) -> None:
    exporter = export.Exporter(database_url, page_rows=10, max_running=1)
    async with exporter.connection():
        with pytest.raises(export.ExportBusy):
            async with exporter.connection():
                pass
    async with exporter.connection() as connection:  # the slot is free again
        assert await connection.fetchval("SELECT 1") == 1
