"""The access log (EVENT_METRICS_ACCESS_LOG=true), read from the real server's stderr: one
line per request, on every route (the raw ASGI POST /events included), with what the
request did, and never a key, wherever the client put it."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import ClientFactory, Keys, live_server

EVENT = {"event_name": "e", "user_id": "u"}


def access_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "event_metrics.access":
                lines.append(record)
    return lines


async def test_one_json_line_per_request_with_what_it_did_and_no_key(
    database_url: str, db: asyncpg.Connection, keys: Keys
) -> None:
    write, read = keys.default.write, keys.default.read
    basic = "Basic " + base64.b64encode(f"{write}:".encode()).decode()
    sent: list[tuple[str, str, httpx.Response]] = []
    with live_server(database_url, access_log="true", log_format="json") as server:
        async with httpx.AsyncClient(base_url=server.url) as client:

            async def send(method: str, route: str, url: str, **kwargs: Any) -> None:
                # Our own request ids, to tell these lines from the start-up probe's.
                kwargs["headers"] = {**kwargs.get("headers", {}), "X-Request-Id": f"t-{len(sent)}"}
                sent.append((method, route, await client.request(method, url, **kwargs)))

            bearer = {"Authorization": f"Bearer {write}"}
            await send("POST", "/events", "/events", json=EVENT, headers=bearer)
            await send("POST", "/events", "/events?wait=false", json=[EVENT] * 3, headers=bearer)
            await send("POST", "/events", "/events", json=[EVENT, {"event_name": ""}],
                       headers=bearer)  # fmt: skip
            await send("POST", "/events", "/events", content=b"{", headers=bearer)
            await send("POST", "/events", "/events", json=EVENT,
                       headers={"Authorization": f"Bearer {write}x"})  # fmt: skip
            segment = {"batch": [{"type": "track", "event": "s", "userId": "u"}],
                       "writeKey": write}  # fmt: skip
            await send("POST", "/v1/batch", "/v1/batch", json=segment,
                       headers={"Authorization": basic})  # fmt: skip
            posthog = {"api_key": write, "batch": [{"event": "p", "distinct_id": "d"}]}
            await send("POST", "/batch", f"/batch/?api_key={write}",
                       content=gzip.compress(json.dumps(posthog).encode()))  # fmt: skip
            window = "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"
            await send("GET", "/metrics", f"/metrics?{window}&key={read}",
                       headers={"Authorization": f"Bearer {read}"})  # fmt: skip
            await send("GET", "/health", "/health")
            await send("GET", "other", f"/{write}")
        stderr = server.stop()
    lines = [line for line in access_lines(stderr) if line["request_id"].startswith("t-")]
    assert len(lines) == len(sent), (lines, stderr[-3000:])
    for (method, route, response), line in zip(sent, lines, strict=True):
        assert (line["method"], line["route"], line["status"]) == (
            method, route, response.status_code
        ), line  # fmt: skip
        assert line["request_id"] == response.headers["x-request-id"]
        assert line["level"] == "info" and line["duration_ms"] >= 0
    project = keys.default.project_id
    counts = [(x.get("project_id"), x.get("accepted"), x.get("duplicates"), x.get("rejected"),
               x.get("queued")) for x in lines]  # fmt: skip
    assert counts == [
        (project, 1, 0, 0, None),
        (project, 0, 0, 0, 3),
        (project, 1, 0, 1, None),
        (project, None, None, None, None),  # malformed: no events
        (None, None, None, None, None),  # refused key: no project
        (project, 1, 0, 0, None),
        (project, 1, 0, 0, None),
        (project, None, None, None, None),  # /metrics: the read key's project
        (None, None, None, None, None),
        (None, None, None, None, None),
    ]
    for secret in (write, read):
        assert secret not in stderr and secret[4:20] not in stderr


async def test_text_lines_and_off_by_default(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_metrics")
    async with make_client() as client:
        assert (await client.post("/events", json=EVENT)).status_code == 200
    assert not [r for r in caplog.records if r.name == "event_metrics.access"]
    async with make_client(access_log=True) as client:
        response = await client.post("/events", json=EVENT)
    lines = [r for r in caplog.records if r.name == "event_metrics.access"]
    assert len(lines) == 1
    text = lines[0].getMessage()
    assert text.startswith("POST /events 200 ") and "ms project=" in text, text
    assert text.endswith("accepted=1 duplicates=0 rejected=0"), text
    assert lines[0].__dict__["status"] == 200
    assert response.headers["x-request-id"]
