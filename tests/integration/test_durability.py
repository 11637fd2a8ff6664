"""An acknowledgement means committed: SIGKILL the service in the middle of a stream of
requests, and every event that got its 200 is in PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx

from conftest import Keys, LiveServer, wait_until

SENDERS = 32


async def test_every_acknowledged_event_survives_sigkill(
    database_url: str, db: asyncpg.Connection, keys: Keys
) -> None:
    server = LiveServer(database_url, replicate="false")
    server.start()
    acknowledged: set[str] = set()
    sent: set[str] = set()

    async def sender(n: int) -> None:
        rng = random.Random(n)
        async with httpx.AsyncClient(
            base_url=server.url, headers=keys.default.auth(), timeout=5
        ) as client:
            for request in range(1_000_000):
                batch = [f"k{n}-{request}-{i}" for i in range(rng.choice((1, 1, 1, 5, 20)))]
                events = [{"event_name": "kill", "user_id": "u", "idempotency_key": k}
                          for k in batch]  # fmt: skip
                sent.update(batch)
                try:
                    response = await client.post("/events", json=events)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    acknowledged.update(batch)

    senders = [asyncio.create_task(sender(n)) for n in range(SENDERS)]
    try:

        async def enough() -> bool:
            return len(acknowledged) >= 3000

        await wait_until(enough, what="3000 events acknowledged")
        assert server.process is not None
        server.process.kill()  # SIGKILL: no drain, no goodbye
        await asyncio.to_thread(server.process.wait)
        await asyncio.gather(*senders)
    finally:
        for task in senders:
            task.cancel()
        server.stop()
    stored = {r["idempotency_key"] for r in await db.fetch("SELECT idempotency_key FROM events")}
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:5]}"
    assert stored <= sent  # nothing stored that was not sent
    assert len(sent) > len(acknowledged)  # requests were in flight when it died
