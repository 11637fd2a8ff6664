"""The dashboard when ClickHouse is configured but down: it says so in words, shows how far
behind the mirror is (from /health), and offers PostgreSQL, which answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dashboard_page import (
    call,
    check_matches_api,
    chromium,
    recorded_context,
    sign_in,
    url_query,
    wait_ready,
)
from playwright.async_api import Browser, expect
from test_dashboard import empty_events

from conftest import Keys, LiveServer, free_port, live_server, wait_until

WINDOW = "?granularity=hour&backend=clickhouse"


@pytest.fixture(scope="module")
async def server(database_url: str, keys: Keys) -> AsyncIterator[LiveServer]:
    await empty_events(database_url)
    nowhere = f"clickhouse://default@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    with live_server(
        database_url, clickhouse_url=nowhere, replication_retry_max_ms="500"
    ) as running:
        events = [{"event_name": "signup", "user_id": f"u{n}"} for n in range(3)]
        sent = await call("POST", f"{running.url}/events", json=events, headers=keys.default.auth())
        assert sent.status_code == 200, sent.text

        async def behind() -> bool:
            health: dict[str, Any] = (await call("GET", f"{running.url}/health")).json()
            replication = health["replication"]
            return bool(
                replication["state"] == "failing"
                and (replication["lag_rows"] or 0) >= 3
                and (replication["lag_seconds"] or 0) >= 1
            )

        await wait_until(behind, what="a measured lag of at least 1 s")
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_clickhouse_down_is_said_with_its_lag_and_postgres_is_offered(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    refusal = await call("GET",
        f"{server.url}/metrics",
        params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
                "backend": "clickhouse"},
        headers=keys.default.auth("read"),
    )  # fmt: skip
    assert refusal.status_code == 503 and refusal.json()["error"] == "backend_unavailable"
    async with recorded_context(browser, server.url) as (context, traffic):
        page = await context.new_page()
        await page.goto(f"{server.url}/dashboard{WINDOW}")
        await sign_in(page, read)  # the key passed its check: a 503 keeps it
        message = page.locator("#message")
        await expect(message).to_contain_text(
            "ClickHouse is unavailable: ClickHouse did not answer"
        )
        await expect(page.locator("#lag")).to_have_text(
            # The lag (at least 1 s, 3 events) and the replicator's own error.
            re.compile(
                r"^ClickHouse is [1-9]\d* s behind \(3 events not copied yet\)\. "
                r"Replication is failing: .+"
            )
        )
        await expect(page.locator("#results")).to_be_hidden()
        assert await page.evaluate("localStorage.length") == 1

        await message.get_by_role("button", name="Ask PostgreSQL instead").click()
        answer = await check_matches_api(page, server.url, read)
        assert url_query(page)["backend"] == "postgres"
        assert answer["total"]["events"] == 3
        await expect(page.locator("#lag")).to_be_hidden()
        await expect(message).to_be_hidden()
        await wait_ready(page)
        traffic.check(read)
