"""How long the dashboard takes to draw 30,000 points: q1 (hourly product views per
channel) over 180 days, 7 channels, 30,240 series rows, in Debian's chromium.

The page and its assets are the package's own (dashboard.render_page and static/), served
by a plain HTTP server; /metrics, /events/names and /health are answered by the browser
test harness with a prepared answer, so what is timed is the browser's work only: from
the answer in hand (parsed) to both charts and the table drawn (`em-render`: the page's
code; `em-drawn`: until the next animation frame), and from the last byte of the /metrics
response to the next frame (`response-to-drawn`: JSON parsing included).

    .venv/bin/python -m bench.dashboard_render [--rounds 9] [--days 180] [--channels 7]

With --compare-wide-lines, rounds alternate between the page as it is and the page with
2 px lines however dense the chart (its chart.js patched as served): the A/B that made
dense charts draw 1 px lines.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from playwright.async_api import Route, async_playwright

from event_metrics import dashboard
from event_metrics.settings import Settings

CHROMIUM = "/usr/bin/chromium"
ZONE = "Europe/Berlin"  # two DST changes in the window: the slow path of the bucket walk
CHANNELS = ["web", "ios", "android", "email", "push", "partner", "api", "sms", "tv"]


def q1_answer(days: int, channels: int) -> tuple[dict[str, Any], str, str]:
    """A /metrics answer as the service would give it: every hour, every channel."""
    zone = ZoneInfo(ZONE)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    end = start + timedelta(days=days)
    series = []
    hour = start
    n = 0
    while hour < end:
        local = hour.astimezone(zone).isoformat(timespec="seconds")
        for channel in CHANNELS[:channels]:
            n += 1
            events = 50 + (n * 7919) % 400
            series.append(
                {"bucket_start": local, "channel": channel, "events": events,
                 "unique_users": events // 3}
            )  # fmt: skip
        hour += timedelta(hours=1)
    answer = {
        "from": start.astimezone(zone).isoformat(timespec="seconds"),
        "to": end.astimezone(zone).isoformat(timespec="seconds"),
        "event_name": "product_view", "granularity": "hour", "group_by": ["channel"],
        "timezone": ZONE, "backend": "postgres",
        "total": {"events": sum(r["events"] for r in series), "unique_users": 48211},
        "series": series,
        "freshness": {"source": "rollup", "lag_rows": 0, "lag_rows_capped": False,
                      "lag_seconds": 0.0, "state": "running",
                      "as_of": "2026-11-01T09:20:41.516+00:00", "age_s": 0.0,
                      "rollup_lag_rows": 0},
    }  # fmt: skip
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return answer, start.strftime(fmt), end.strftime(fmt)


DENSE_WIDTH = b"width: dense ? 1 : 2,"


class _Handler(http.server.SimpleHTTPRequestHandler):
    page = b""
    wide_lines = False

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == dashboard.PAGE_PATH:
            self._send(self.page, "text/html; charset=utf-8")
            return
        self.path = self.path.removeprefix(dashboard.ASSETS_PATH)
        if self.wide_lines and self.path == "/chart.js":
            script = (dashboard.STATIC / "assets" / "chart.js").read_bytes()
            assert DENSE_WIDTH in script, "chart.js no longer picks its line width this way"
            self._send(script.replace(DENSE_WIDTH, b"width: 2,"), "text/javascript")
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def page_server(*, wide_lines: bool = False) -> Iterator[str]:
    handler_class = type("Handler", (_Handler,), {
        "page": dashboard.render_page(Settings.build()), "wide_lines": wide_lines,
    })  # fmt: skip
    handler = functools.partial(handler_class, directory=str(dashboard.STATIC / "assets"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


TIMINGS = """() => {
    const last = (name) => performance.getEntriesByName(name).at(-1).duration;
    const response = performance.getEntriesByType('resource')
        .filter((e) => e.name.includes('/metrics?')).at(-1);
    const drawn = performance.getEntriesByName('em-drawn').at(-1);
    return {render: last('em-render'), drawn: last('em-drawn'),
            response_to_drawn: drawn.startTime + drawn.duration - response.responseEnd};
}"""


async def measure(
    rounds: int, days: int, channels: int, *, compare: bool = False
) -> dict[str, Any]:
    answer, start, end = q1_answer(days, channels)
    body = json.dumps(answer).encode()
    names = json.dumps({"from": answer["from"], "to": answer["to"], "backend": "postgres",
                        "names": [{"event_name": "product_view", "events": 1, "unique_users": 1}],
                        "freshness": answer["freshness"]}).encode()  # fmt: skip

    async def api(route: Route) -> None:
        path = route.request.url.split("?")[0]
        if path.endswith("/metrics"):
            await route.fulfill(status=200, body=body, content_type="application/json")
        elif path.endswith("/events/names"):
            await route.fulfill(status=200, body=names, content_type="application/json")
        else:
            await route.continue_()

    variants = ["as_is", "wide_lines"] if compare else ["as_is"]
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    query = f"from={start}&to={end}&event_name=product_view&granularity=hour"
    query += f"&group_by=channel&timezone={ZONE}"
    with page_server() as as_is, page_server(wide_lines=True) as wide:
        origins = {"as_is": as_is, "wide_lines": wide}
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                context = await browser.new_context(
                    viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id=ZONE
                )
                await context.add_init_script(
                    "localStorage.setItem('event-metrics.read-key', 'emr_bench')"
                )
                await context.route("**/*", api)
                page = await context.new_page()
                for _ in range(rounds):
                    for variant in variants:  # interleaved: load changes hit both alike
                        await page.goto(f"{origins[variant]}/dashboard?{query}")
                        await page.wait_for_function(
                            "performance.getEntriesByName('em-drawn').length > 0",
                            timeout=60_000,
                        )
                        results[variant].append(await page.evaluate(TIMINGS))
                lines = await page.evaluate(
                    "document.querySelectorAll('#events-chart .u-series').length - 1"
                )
            finally:
                await browser.close()
    summary: dict[str, Any] = {
        "rows": len(answer["series"]),
        "points_per_chart": len(answer["series"]),
        "lines_per_chart": lines,
        "rounds": rounds,
    }
    for variant, measured in results.items():
        timings: dict[str, Any] = {}
        for name in ("render", "drawn", "response_to_drawn"):
            values = sorted(r[name] for r in measured)
            timings[f"{name}_ms"] = {"median": round(statistics.median(values), 1),
                                     "max": round(values[-1], 1)}  # fmt: skip
        summary[variant] = timings
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--channels", type=int, default=7)
    parser.add_argument("--compare-wide-lines", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    summary = asyncio.run(
        measure(args.rounds, args.days, args.channels, compare=args.compare_wide_lines)
    )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
