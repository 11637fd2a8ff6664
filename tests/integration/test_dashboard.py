"""The dashboard in Debian's chromium, against `event-metrics serve` with both engines and
seeded events: every control, checked against /metrics for the same query; the URL;
the key; live mode; sorting and CSV; keyboard; both widths. Every test fails if the page
asks any other origin for anything (dashboard_page.recorded_context)."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from clickhouse_driver import Client
from dashboard_page import (
    BROWSER_ZONE,
    TIMEOUT_MS,
    call,
    check_matches_api,
    chromium,
    recorded_context,
    shown,
    sign_in,
    url_query,
    wait_ready,
)
from playwright.async_api import Browser, Page, expect
from throwaway.clickhouse import ClickHouseServer

from conftest import Keys, LiveServer, clickhouse_database_url, live_server, wait_until
from event_metrics.buckets import bucket_bounds

CHANNELS = ["web", "ios", "android", None]
NAMES = ["page_view", "product_view", "signup", "purchase"]


def seed_events(now: datetime, count: int = 400) -> list[dict[str, Any]]:
    """Events over the last 80 days, a tenth of them in the last hour."""
    rng = random.Random(26)
    events = []
    for n in range(count):
        span = 3000 if n % 10 == 0 else 80 * 24 * 3600
        event: dict[str, Any] = {
            "event_name": rng.choice(NAMES),
            "user_id": f"u-{rng.randrange(60)}",
            "timestamp": (now - timedelta(seconds=rng.randrange(60, span))).isoformat(),
            "idempotency_key": f"dash-{n}",
        }
        channel = rng.choice(CHANNELS)
        if channel:
            event["channel"] = channel
        events.append(event)
    return events


async def empty_events(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "TRUNCATE events, replication_state, rollups, user_ids RESTART IDENTITY"
        )
    finally:
        await connection.close()


async def mirrored(database_url: str, clickhouse_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        expected = await connection.fetchval("SELECT count(*) FROM events")
    finally:
        await connection.close()
    client = Client.from_url(clickhouse_url)
    try:
        if not client.execute("EXISTS TABLE events")[0][0]:
            return False
        return bool(client.execute("SELECT count() FROM events FINAL")[0][0] == expected)
    finally:
        client.disconnect()


@pytest.fixture(scope="module")
def clickhouse_database(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    name = f"dash_{uuid.uuid4().hex[:10]}"
    admin = Client.from_url(clickhouse_server.url)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield clickhouse_database_url(clickhouse_server, name)
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


@pytest.fixture(scope="module")
async def server(
    database_url: str, keys: Keys, clickhouse_database: str
) -> AsyncIterator[LiveServer]:
    await empty_events(database_url)
    with live_server(
        database_url, clickhouse_url=clickhouse_database, replication_interval_ms="100"
    ) as running:
        response = await call(
            "POST",
            f"{running.url}/events",
            json=seed_events(datetime.now(UTC)),
            headers=keys.default.auth("write"),
        )
        assert response.status_code == 200, response.text
        await wait_until(
            lambda: mirrored(database_url, clickhouse_database), what="replication to ClickHouse"
        )
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots, kept under the run's basetemp."""
    return tmp_path_factory.mktemp("dashboard-screenshots", numbered=False)


async def signed_in(page: Page, server: LiveServer, key: str, query: str = "") -> None:
    await page.goto(f"{server.url}/dashboard{query}")
    await sign_in(page, key)
    await wait_ready(page)


async def choose(page: Page, label: str, value: str) -> None:
    await page.get_by_label(label, exact=True).select_option(value)


# --- every control ---------------------------------------------------------------------------


async def test_every_control_shows_what_metrics_answers(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, traffic):
        page = await context.new_page()
        await page.goto(f"{server.url}/")  # the root leads to the dashboard
        assert page.url.startswith(f"{server.url}/dashboard")
        await sign_in(page, read)
        answer = await check_matches_api(page, server.url, read)
        # Defaults: the last 7 days by day, in the browser's zone, from the default engine.
        query = url_query(page)
        assert (query["granularity"], query["timezone"], query["backend"]) == (
            "day",
            BROWSER_ZONE,
            "postgres",
        )
        assert datetime.fromisoformat(query["to"]) - datetime.fromisoformat(query["from"]) == (
            timedelta(days=7)
        )
        assert await page.get_by_label("Time range").input_value() == "7d"
        assert answer["total"]["events"] > 0

        for preset, span in [("24h", 1), ("90d", 90), ("1h", 1 / 24), ("30d", 30)]:
            await choose(page, "Time range", preset)
            await check_matches_api(page, server.url, read)
            query = url_query(page)
            window = datetime.fromisoformat(query["to"]) - datetime.fromisoformat(query["from"])
            assert window == timedelta(days=span)
        for granularity in ("hour", "week", "month", "total", "day"):
            await choose(page, "Granularity", granularity)
            await check_matches_api(page, server.url, read)
        for group_by in ("channel", "event_name", "channel,event_name", ""):
            await choose(page, "Group by", group_by)
            answer = await check_matches_api(page, server.url, read)
            assert answer["group_by"] == [d for d in group_by.split(",") if d]

        # The event picker lists /events/names for the window, counts and all.
        query = url_query(page)
        listed = await call(
            "GET",
            f"{server.url}/events/names",
            params={"from": query["from"], "to": query["to"], "backend": "postgres"},
            headers=keys.default.auth("read"),
        )
        names = listed.json()["names"]
        options = await page.locator("#event_name option").all_inner_texts()
        assert options == ["All events"] + [f"{n['event_name']} ({n['events']:,})" for n in names]
        await choose(page, "Event", "product_view")
        answer = await check_matches_api(page, server.url, read)
        assert answer["event_name"] == "product_view"

        await choose(page, "Group by", "channel")
        await choose(page, "Time zone", "America/New_York")
        answer = await check_matches_api(page, server.url, read)
        assert answer["timezone"] == "America/New_York"

        await choose(page, "Backend", "clickhouse")
        answer = await check_matches_api(page, server.url, read)
        assert answer["backend"] == "clickhouse"
        await expect(page.locator("#lag")).to_have_text("ClickHouse is up to date.")

        # A custom window, typed as wall times of the chosen zone.
        await page.get_by_label("From").fill("2026-01-10T08:00:00")  # New York, -05:00
        await wait_until(
            lambda: url_query(page)["from"] == "2026-01-10T13:00:00Z", what="the new from"
        )
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        wall = end.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None)
        await page.get_by_label("To (not included)").fill(wall.isoformat())
        await page.get_by_label("To (not included)").blur()
        await wait_until(
            lambda: url_query(page)["to"] == end.strftime("%Y-%m-%dT%H:%M:%SZ"), what="the new to"
        )
        await check_matches_api(page, server.url, read)
        assert await page.get_by_label("Time range").input_value() == "custom"
        traffic.check(read)


# --- the URL -------------------------------------------------------------------------------


async def test_a_shared_url_shows_exactly_its_query_after_sign_in(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    query = {
        "from": (now - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event_name": "page_view",
        "granularity": "week",
        "group_by": "event_name,channel",
        "timezone": "Asia/Kolkata",
        "backend": "clickhouse",
    }
    shared = f"{server.url}/dashboard?{urlencode(query)}"
    async with recorded_context(browser, server.url) as (context, traffic):
        page = await context.new_page()
        await page.goto(shared)
        await expect(page.get_by_label("Read key")).to_be_visible()
        await sign_in(page, read)
        answer = await check_matches_api(page, server.url, read)
        assert url_query(page) == query, "the page changed the shared query"
        assert answer["backend"] == "clickhouse" and answer["group_by"] == ["event_name", "channel"]
        assert await page.get_by_label("Time range").input_value() == "custom"
        assert await page.get_by_label("Backend").input_value() == "clickhouse"

        # Controls changed here make a URL that another tab (key stored) opens as it is.
        await choose(page, "Granularity", "day")
        await wait_ready(page)
        bookmarked = page.url
        assert read not in bookmarked
        other = await context.new_page()
        await other.goto(bookmarked)
        await check_matches_api(other, server.url, read)
        assert url_query(other) == url_query(page)
        # Back goes to the query before.
        await page.go_back()
        await wait_ready(page)
        assert url_query(page) == query
        await check_matches_api(page, server.url, read)
        traffic.check(read)


# --- the key -------------------------------------------------------------------------------


async def test_a_write_key_gets_the_apis_403_in_words_and_is_not_kept(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    refusal = await call(
        "GET",
        f"{server.url}/events/names",
        params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
        headers=keys.default.auth("write"),
    )
    assert refusal.status_code == 403
    detail = refusal.json()["detail"]
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await page.goto(f"{server.url}/dashboard")
        await sign_in(page, keys.default.write)
        alert = page.locator("#sign-in-error")
        await expect(alert).to_have_text(f"{detail} (403 wrong_scope)")
        await expect(page.get_by_label("Read key")).to_have_attribute("aria-invalid", "true")
        assert await page.evaluate("localStorage.length") == 0
        await expect(page.locator("#dashboard")).to_be_hidden()

        await sign_in(page, "emr_" + "x" * 32)
        await expect(alert).to_contain_text("(401 invalid_credentials)")
        assert await page.evaluate("localStorage.length") == 0


async def test_the_key_is_kept_sent_only_as_authorization_and_forgotten(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, traffic):
        page = await context.new_page()
        await signed_in(page, server, read)
        stored = await page.evaluate("Object.values(localStorage)")
        assert stored == [read]
        keyed = [r for r in traffic.requests if r.headers.get("authorization")]
        assert keyed and all(r.headers["authorization"] == f"Bearer {read}" for r in keyed)
        assert {r.url.split("?")[0].removeprefix(server.url) for r in keyed} == {
            "/metrics",
            "/events/names",
        }
        # A reload needs no key; the prefix shown is the one `keys list` shows.
        await page.reload()
        await wait_ready(page)
        await expect(page.locator("#key-shown")).to_have_text(f"Read key {read[:12]}…")

        await page.get_by_role("button", name="Forget key").click()
        await expect(page.get_by_label("Read key")).to_be_visible()
        await expect(page.get_by_label("Read key")).to_be_focused()
        assert await page.evaluate("localStorage.length") == 0
        await page.reload()
        await expect(page.get_by_label("Read key")).to_be_visible()
        traffic.check(read)


# --- live mode -------------------------------------------------------------------------------


async def test_live_mode_shows_a_new_event_arriving(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await signed_in(page, server, read, "?granularity=hour")
        await choose(page, "Time range", "1h")
        await wait_ready(page)
        await page.get_by_role("button", name="Live: off").click()
        await expect(page.locator("#live")).to_have_attribute("aria-pressed", "true")
        await wait_ready(page)
        assert url_query(page).get("live") == "1"
        before = (await shown(page))["total"]["events"]

        sent = await call(
            "POST",
            f"{server.url}/events",
            json={"event_name": "signup", "user_id": "live-user", "channel": "web"},
            headers=keys.default.auth("write"),
        )
        assert sent.status_code == 200, sent.text
        # No reload, no click: the next refresh (within 5 s) shows it.
        await expect(page.locator("#total-events")).to_have_text(
            f"{before + 1:,}", timeout=TIMEOUT_MS
        )
        await expect(page.locator("#live-news")).to_have_text(
            "+1 new event in the last refresh", timeout=TIMEOUT_MS
        )
        await check_matches_api(page, server.url, read)
        await page.get_by_role("button", name="Live: on").click()
        await expect(page.locator("#live")).to_have_attribute("aria-pressed", "false")
        assert "live" not in url_query(page)


# --- the table -------------------------------------------------------------------------------


async def test_the_table_sorts_and_downloads_the_answer_as_csv(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await signed_in(page, server, read, "?granularity=week&group_by=channel")
        answer = await check_matches_api(page, server.url, read)

        events_header = page.locator('th[data-key="events"]')
        await events_header.get_by_role("button").click()
        await expect(events_header).to_have_attribute("aria-sort", "descending")
        counts = [row["events"] for row in (await shown(page))["series"]]
        assert counts == sorted(counts, reverse=True) and len(counts) == len(answer["series"])
        await events_header.get_by_role("button").press("Enter")  # the keyboard sorts too
        await expect(events_header).to_have_attribute("aria-sort", "ascending")
        counts = [row["events"] for row in (await shown(page))["series"]]
        assert counts == sorted(counts)

        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download CSV").click()
        download = await download_info.value
        text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        expected = [
            {
                "bucket_start": r["bucket_start"],
                "channel": r["channel"] or "",
                "events": str(r["events"]),
                "unique_users": str(r["unique_users"]),
            }
            for r in answer["series"]
        ]
        key = lambda row: (row["bucket_start"], row["channel"])  # noqa: E731
        assert sorted(rows, key=key) == sorted(expected, key=key)


# --- states ----------------------------------------------------------------------------------


async def test_loading_empty_and_an_error_in_the_apis_words(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await signed_in(page, server, read)

        # Loading: held until the test lets the answer through.
        release = asyncio.Event()

        async def held(route: Any) -> None:
            await release.wait()
            await route.continue_()

        await page.route("**/metrics?*", held)
        await choose(page, "Granularity", "week")
        await expect(page.locator("#status")).to_have_text("Loading…")
        await expect(page.locator("#dashboard")).to_have_attribute("aria-busy", "true")
        release.set()
        await check_matches_api(page, server.url, read)
        await page.unroute("**/metrics?*")

        empty = {"from": "2001-01-01T00:00:00Z", "to": "2001-02-01T00:00:00Z"}
        await page.goto(f"{server.url}/dashboard?{urlencode(empty)}")
        await wait_ready(page)
        await expect(page.locator("#empty")).to_have_text(
            "No events from 2001-01-01T01:00:00+01:00 to 2001-02-01T01:00:00+01:00."
        )
        await expect(page.locator("#charts")).to_be_hidden()
        assert (await shown(page))["total"] == {"events": 0, "unique_users": 0}

        bad = {**empty, "timezone": "Mars/Olympus"}
        refusal = await call(
            "GET", f"{server.url}/metrics", params=bad, headers=keys.default.auth("read")
        )
        assert refusal.status_code == 400
        await page.goto(f"{server.url}/dashboard?{urlencode(bad)}")
        await expect(page.locator("#message")).to_have_text(
            f"{refusal.json()['detail']} (400 invalid_parameter)"
        )
        await expect(page.get_by_label("Time zone")).to_have_attribute("aria-invalid", "true")
        assert url_query(page)["timezone"] == "Mars/Olympus"


# --- keyboard and widths ------------------------------------------------------------------------


async def test_keyboard_reaches_and_works_every_control(
    server: LiveServer, browser: Browser, keys: Keys
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await page.goto(f"{server.url}/dashboard")
        await expect(page.get_by_label("Read key")).to_be_focused()
        await page.keyboard.type(read)
        await page.keyboard.press("Enter")
        await wait_ready(page)
        reached = []
        for _ in range(40):
            await page.keyboard.press("Tab")
            reached.append(
                await page.evaluate(
                    "document.activeElement.id || document.activeElement.textContent"
                )
            )
        for control in ("forget", "range", "from", "to", "event_name", "granularity", "group_by",
                        "timezone", "backend", "live", "csv"):  # fmt: skip
            assert control in reached, f"Tab never reaches #{control}: {reached}"
        assert "Events" in reached  # the table's sort buttons

        await page.get_by_label("Group by").focus()
        await page.keyboard.press("ArrowDown")
        await wait_ready(page)
        assert url_query(page)["group_by"] == "channel"
        await check_matches_api(page, server.url, read)


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
async def test_readable_at_both_widths(
    server: LiveServer, browser: Browser, keys: Keys, artefacts: Path, width: int, height: int
) -> None:
    read = keys.default.read
    async with recorded_context(browser, server.url, width=width, height=height) as (context, _):
        page = await context.new_page()
        await signed_in(page, server, read, "?granularity=day&group_by=channel")
        await check_matches_api(page, server.url, read)
        # Nothing wider than the screen but the table, which scrolls in its own box.
        overflow = await page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"the page is {overflow} px wide at {width} px"
        for box in ("#events-chart canvas", "#users-chart canvas"):
            size = await page.locator(box).bounding_box()
            assert size and 0.5 * width < size["width"] <= width
        await page.screenshot(path=artefacts / f"dashboard-{width}.png", full_page=True)
        assert (artefacts / f"dashboard-{width}.png").stat().st_size > 10_000


# --- where the charts put buckets ------------------------------------------------------------

ZONES = ["America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Europe/Berlin", "UTC"]
WINDOWS = [  # across the 2026 DST changes of the zones above
    ("2026-03-05T07:30:00Z", "2026-04-12T00:00:00Z"),
    ("2026-09-20T00:00:00Z", "2026-11-15T13:00:00Z"),
]


async def test_the_charts_cut_buckets_where_the_service_does(
    server: LiveServer, browser: Browser
) -> None:
    # The charts fill the buckets the API leaves out (no events) with zeros; that needs
    # the page to know where every bucket starts, in any zone, as buckets.py does.
    async with recorded_context(browser, server.url) as (context, _):
        page = await context.new_page()
        await page.goto(f"{server.url}/dashboard")
        for zone, (start, end), granularity in itertools.product(
            ZONES, WINDOWS, ["hour", "day", "week", "month", "total"]
        ):
            lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
            bounds = bucket_bounds(lo, hi, granularity, ZoneInfo(zone))
            inside = [b * 1000 for b in bounds if lo.timestamp() < b < hi.timestamp()]
            expected = [int(lo.timestamp() * 1000), *inside]
            got = await page.evaluate(
                """async ([start, end, granularity, zone]) => {
                    const zones = await import('/dashboard/static/zones.js');
                    return zones.bucketStarts(Date.parse(start), Date.parse(end), granularity,
                                              zone);
                }""",
                [start, end, granularity, zone],
            )
            assert got == expected, (zone, start, granularity)
