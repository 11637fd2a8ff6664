"""The schema pages render the API in a real browser (Debian's chromium), offline: every
request a page makes goes to the service itself."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, Response, Route, async_playwright, expect

from conftest import LiveServer, live_server, unavailable

CHROMIUM = "/usr/bin/chromium"
PAGES = ["/schema", "/schema/swagger", "/schema/redoc", "/schema/rapidoc"]
OPENED = ["/events", "/metrics"]  # operations whose details the test opens on each page
RENDER_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no chromium at {CHROMIUM} (make test installs Debian's chromium)")
    async with async_playwright() as playwright:
        # Should a request get past the interception in the test, it still cannot leave
        # the machine: every host name but the service's resolves to nothing.
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module")
def summaries(server: LiveServer) -> dict[str, str]:
    """Path -> summary of the operation at each path of the served schema (one per path)."""
    schema = httpx.get(f"{server.url}/schema/openapi.json").raise_for_status().json()
    return {
        path: operation["summary"]
        for path, item in schema["paths"].items()
        for operation in item.values()
    }


def shown(page: Page, text: str, *, exact: bool = False) -> Locator:
    # The UIs keep hidden copies of some texts (menus, dropdowns): look at visible ones.
    return page.get_by_text(text, exact=exact).filter(visible=True).first


async def check_operations_shown(page: Page, summaries: dict[str, str]) -> None:
    for summary in set(summaries.values()):
        await expect(shown(page, summary)).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    for path in OPENED:
        # RapiDoc lists only summaries until an operation is opened; the others show both.
        # Forced: RapiDoc's text has `pointer-events: none`, so its menu row takes the click.
        await shown(page, summaries[path]).click(force=True)
        await expect(shown(page, path, exact=True)).to_be_visible(timeout=RENDER_TIMEOUT_MS)


@pytest.mark.parametrize("page_path", PAGES)
async def test_schema_page_renders_operations_offline(
    server: LiveServer, browser: Browser, summaries: dict[str, str], page_path: str
) -> None:
    own_host = urlsplit(server.url).netloc
    foreign: list[str] = []
    failed: list[str] = []
    errors: list[str] = []

    async def only_own_host(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own_host:
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort("blockedbyclient")

    def note_failure(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    context = await browser.new_context()
    context.set_default_timeout(RENDER_TIMEOUT_MS)
    try:
        await context.route("**/*", only_own_host)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("response", note_failure)
        await page.goto(f"{server.url}{page_path}")
        await check_operations_shown(page, summaries)
    finally:
        await context.close()
    assert not foreign, f"{page_path} tried to reach other hosts: {foreign}"
    assert not failed, f"{page_path} asked the service for what it does not serve: {failed}"
    assert not errors, f"{page_path} raised in the browser: {errors}"


def test_only_offline_pages_are_offered(server: LiveServer) -> None:
    # Stoplight Elements is not served, so its page is gone rather than blank.
    assert httpx.get(f"{server.url}/schema/elements").status_code == 404
    assert httpx.get(f"{server.url}/schema/openapi.yaml").status_code == 200
    assert httpx.get(f"{server.url}/schema/openapi.json").status_code == 200
