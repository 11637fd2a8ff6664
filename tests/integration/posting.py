"""Posting to POST /events in the tests, and reading what was stored."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

NDJSON = {"Content-Type": "application/x-ndjson"}


def ev(key: str, **fields: Any) -> dict[str, Any]:
    """A valid event with an explicit idempotency key, so the stored row can be found."""
    event: dict[str, Any] = {"event_name": "signup", "user_id": "u1", "idempotency_key": key}
    event.update(fields)
    return event


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def count_events(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM events")
    return count


async def post(client: Any, body: Any, **kwargs: Any) -> Any:
    return await client.post("/events", content=json.dumps(body).encode(), **kwargs)


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body
