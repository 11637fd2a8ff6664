from typing import Any

from litestar.testing import AsyncTestClient


async def test_one_event_round_trip(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/events",
        json={"event_name": "signup", "user_id": "u1", "timestamp": "2026-11-01T10:00:00Z"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    response = await client.get(
        "/metrics", params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"] == {"events": 1, "unique_users": 1}
    response = await client.get("/health")
    assert response.json()["status"] == "ok", response.text
