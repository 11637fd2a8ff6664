"""What the dashboard tests share: Debian's chromium kept offline, a browser context whose
every request is recorded (and any to another origin refused and reported), and readers
of what the page shows."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, async_playwright

from conftest import unavailable

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 15_000
QUERY = ("from", "to", "event_name", "granularity", "group_by", "timezone", "backend")
BROWSER_ZONE = "Europe/Berlin"  # the context's zone: the page's default
# The browser logs every 4xx and 5xx answer it gets; the tests provoke some on purpose.
EXPECTED_CONSOLE_ERRORS = ("Failed to load resource: the server responded with a status of",)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no chromium at {CHROMIUM} (make test installs Debian's chromium)")
    async with async_playwright() as playwright:
        # Every host name but the service's resolves to nothing: nothing leaves the machine.
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Traffic:
    """Every request the pages of a context made, and the page errors they raised."""

    origin: str
    requests: list[Request] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self, key: str | None = None) -> None:
        assert self.requests, "the page made no request at all"
        assert not self.foreign, f"requests to other origins: {self.foreign}"
        others = [r.url for r in self.requests if _origin(r.url) != self.origin]
        assert not others, f"requests to other origins: {others}"
        assert not self.errors, f"errors in the page: {self.errors}"
        if key:
            assert not [r.url for r in self.requests if key in r.url], "the key was in a URL"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.asynccontextmanager
async def recorded_context(
    browser: Browser, origin: str, *, width: int = 1280, height: int = 900
) -> AsyncIterator[tuple[BrowserContext, Traffic]]:
    """A context in Berlin's zone and US English; on exit, fails if any page of it asked
    another origin for anything or raised an error."""
    traffic = Traffic(origin)
    context = await browser.new_context(
        viewport={"width": width, "height": height},
        locale="en-US",
        timezone_id=BROWSER_ZONE,
        accept_downloads=True,
    )
    context.set_default_timeout(TIMEOUT_MS)

    async def only_own_origin(route: Route) -> None:
        if _origin(route.request.url) == origin or route.request.url.startswith("blob:"):
            await route.continue_()
        else:
            traffic.foreign.append(route.request.url)
            await route.abort("blockedbyclient")

    await context.route("**/*", only_own_origin)
    context.on("request", lambda request: traffic.requests.append(request))

    def watch(page: Page) -> None:
        page.on("pageerror", lambda error: traffic.errors.append(str(error)))
        # A request the CSP refused, or any other error the page logs.
        page.on("console", lambda message: note_console(message.type, message.text))

    def note_console(kind: str, text: str) -> None:
        if kind == "error" and not text.startswith(EXPECTED_CONSOLE_ERRORS):
            traffic.errors.append(text)

    context.on("page", watch)
    try:
        yield context, traffic
    finally:
        await context.close()
    traffic.check()


async def sign_in(page: Page, key: str) -> None:
    await page.get_by_label("Read key").fill(key)
    await page.get_by_role("button", name="Show metrics").click()


async def wait_ready(page: Page) -> None:
    """Until the page shows the answer to the query its URL names."""
    await page.wait_for_function(
        """() => {
            const main = document.getElementById('dashboard');
            return main.dataset.state === 'ready' && main.getAttribute('aria-busy') === 'false'
                && main.dataset.query === window.location.search.slice(1);
        }""",
        timeout=TIMEOUT_MS,
    )


def url_query(page: Page) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(page.url).query))


async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to the service under test, from the test's side."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, url, **kwargs)


async def metrics(origin: str, key: str, query: dict[str, str]) -> dict[str, Any]:
    """The API's own answer to the page's query."""
    params = {name: value for name, value in query.items() if name in QUERY}
    response = await call(
        "GET", f"{origin}/metrics", params=params, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def as_number(text: str) -> int:
    digits = re.sub(r"[^0-9]", "", text)
    assert digits, f"not a number: {text!r}"
    return int(digits)


async def shown(page: Page) -> dict[str, Any]:
    """The totals and the table rows as the page shows them: text, not data."""
    raw: dict[str, Any] = await page.evaluate(
        """() => {
            const text = (id) => document.getElementById(id).textContent;
            const keys = [...document.querySelectorAll('#table thead th')].map(
                (th) => th.dataset.key);
            const rows = [...document.querySelectorAll('#table tbody tr')].map((tr) =>
                Object.fromEntries([...tr.cells].map((cell, n) => {
                    const time = cell.querySelector('time');
                    return [keys[n], time ? time.getAttribute('datetime') : cell.textContent];
                })));
            return {events: text('total-events'), users: text('total-users'), keys, rows};
        }"""
    )
    rows = []
    for row in raw["rows"]:
        parsed: dict[str, Any] = {}
        for name, value in row.items():
            if name in ("events", "unique_users"):
                parsed[name] = as_number(value)
            elif value in ("(no channel)", "(none)"):
                parsed[name] = None
            else:
                parsed[name] = value
        rows.append(parsed)
    return {
        "total": {"events": as_number(raw["events"]), "unique_users": as_number(raw["users"])},
        "columns": raw["keys"],
        "series": rows,
    }


async def check_matches_api(page: Page, origin: str, key: str) -> dict[str, Any]:
    """The page shows, for the query in its URL, exactly what /metrics answers to it, and
    its controls show that query."""
    await wait_ready(page)
    query = url_query(page)
    assert set(query) <= {*QUERY, "live"}, query
    answer = await metrics(origin, key, query)
    seen = await shown(page)
    expected = answer["series"]
    if answer["granularity"] == "total":  # one bucket, the window: the table leaves it out
        expected = [{k: v for k, v in row.items() if k != "bucket_start"} for row in expected]
    assert seen["total"] == answer["total"], (query, seen["total"], answer["total"])
    assert seen["series"] == expected, query
    for name in ("granularity", "timezone", "event_name"):
        assert await page.locator(f"#{name}").input_value() == query.get(name, "")
    assert await page.locator("#group_by").input_value() == query.get("group_by", "")
    return answer
