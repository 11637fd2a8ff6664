"""Bodies the browser SDKs really sent (tests/fixtures/sdk) decode to what they carried,
and split into the messages the SDKs meant; Segment and PostHog messages map onto our
columns as docs/api.md says."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from event_metrics import posthog, sdk, segment
from event_metrics.events import InvalidEvent
from event_metrics.payload import MalformedPayload, PayloadTooLarge

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "sdk").glob("*.json"))
NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
LIMITS = {"max_event_bytes": 65536, "max_depth": 32}
# The keys the recordings carry: browser SDKs (posthog-js, analytics.js) and server SDKs
# (bench/capture_sdks.py).
RECORDED_KEYS = ("phc_browser_test_token", "wk_browser_test", "wk_classic_test",
                 "wk_server_test", "phc_server_test_token")  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(path.read_text())
    return recorded


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_recorded_bodies_decode_to_what_they_carried(path: Path) -> None:
    recorded = load(path)
    body = base64.b64decode(recorded["body_b64"])
    text = await sdk.json_body(
        body, content_type=recorded["headers"].get("Content-Type"), max_bytes=5_000_000
    )
    assert json.loads(text) == recorded["decoded_json"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_recorded_bodies_split_into_messages_that_map(path: Path) -> None:
    recorded = load(path)
    body = base64.b64decode(recorded["body_b64"])
    text = await sdk.json_body(
        body, content_type=recorded["headers"].get("Content-Type"), max_bytes=5_000_000
    )
    carried = recorded["decoded_json"]
    if recorded["path"].startswith("/v1/"):
        request = segment.parse(text, recorded["path"])
        expected = len(carried["batch"]) if "batch" in carried else 1
        messages = [segment.message(raw, request, **LIMITS) for raw in request.messages]
        basic = recorded["headers"].get("Authorization", "Basic ")[6:]
        header_key = base64.b64decode(basic).decode().rstrip(":") or None
        assert (request.key or header_key) in RECORDED_KEYS
    else:
        query = dict(urllib.parse.parse_qsl(recorded["query"]))
        ph_request = posthog.parse(text, query)
        expected = len(carried) if isinstance(carried, list) else len(carried.get("batch", [1]))
        messages = [
            posthog.message(raw, ph_request, received_at=NOW, **LIMITS) for raw in ph_request.events
        ]
        assert (ph_request.key or posthog.key_in_events(ph_request)) in RECORDED_KEYS
    assert len(messages) == expected
    for message in messages:
        row = sdk.to_row_from(message, project_id=7, received_at=NOW, max_future=timedelta(days=1))
        assert row.event_name and row.user_id and row.idempotency_key
        stored = json.loads(row.properties or "{}")
        for key in RECORDED_KEYS:
            assert key not in json.dumps(stored)  # the key is never kept


def segment_row(message: dict[str, Any], path: str = "/v1/batch", **envelope: Any) -> Any:
    body = json.dumps({"batch": [message], **envelope}).encode()
    request = segment.parse(body, path)
    mapped = segment.message(request.messages[0], request, **LIMITS)
    return sdk.to_row_from(mapped, project_id=1, received_at=NOW, max_future=timedelta(days=1))


@pytest.mark.parametrize(
    ("kind", "event_name"),
    [("track", "Signed Up"), ("page", "page"), ("screen", "screen"), ("identify", "identify"),
     ("group", "group"), ("alias", "alias")],
)  # fmt: skip
def test_segment_event_names(kind: str, event_name: str) -> None:
    row = segment_row({"type": kind, "event": "Signed Up", "userId": "u1", "messageId": "m1"})
    assert row.event_name == event_name


def test_segment_fields_map_and_nothing_is_lost() -> None:
    # Written as JSON text: a Python float would lose the digits before the service sees them.
    body = b"""{"sentAt": "2026-11-29T12:00:00.000Z", "batch": [{
        "type": "track", "event": "Order", "anonymousId": "anon-1", "userId": null,
        "messageId": "m-1", "timestamp": "2026-11-29T11:59:00.000Z",
        "properties": {"total": 12345678901234567890.5, "items": [1, 2]},
        "context": {"library": {"name": "analytics.js", "version": "1.0"}, "page": {"path": "/"}},
        "integrations": {"All": true}, "traits": {"plan": "pro"}, "writeKey": "emw_secret"}]}"""
    request = segment.parse(body, "/v1/batch")
    mapped = segment.message(request.messages[0], request, **LIMITS)
    row = sdk.to_row_from(mapped, project_id=1, received_at=NOW, max_future=timedelta(days=1))
    assert (row.user_id, row.idempotency_key, row.channel) == ("anon-1", "m-1", "analytics.js")
    assert row.ts == NOW - timedelta(minutes=1)  # skew-corrected against sentAt
    assert '"total": 12345678901234567890.5' in (row.properties or "")  # digits as sent
    stored = json.loads(row.properties or "{}")
    assert stored["items"] == [1, 2]
    assert stored["$segment"]["context"]["page"] == {"path": "/"}
    assert stored["$segment"]["traits"] == {"plan": "pro"}
    assert stored["$segment"]["anonymousId"] == "anon-1"
    assert stored["$segment"]["type"] == "track"
    assert "writeKey" not in stored["$segment"] and "emw_secret" not in (row.properties or "")


def test_segment_channel_prefers_the_messages_own() -> None:
    base = {"type": "track", "event": "e", "userId": "u", "context": {"library": {"name": "lib"}}}
    assert segment_row({**base, "channel": "server"}).channel == "server"
    with_context = {**base, "context": {"channel": "mobile", "library": {"name": "lib"}}}
    assert segment_row(with_context).channel == "mobile"
    assert segment_row(base).channel == "lib"


def test_segment_single_message_routes_take_the_type_from_the_path() -> None:
    body = json.dumps({"event": "Clicked", "userId": "u", "writeKey": "k"}).encode()
    request = segment.parse(body, "/v1/t")
    assert request.key == "k"
    mapped = segment.message(request.messages[0], request, **LIMITS)
    assert mapped.event_name == "Clicked"


@pytest.mark.parametrize(
    ("message", "error"),
    [({"type": "track", "userId": "u"}, "event name"),
     ({"type": "track", "event": "e"}, "userId and anonymousId are missing"),
     ({"type": "nope", "event": "e", "userId": "u"}, "type must be"),
     ({"type": "track", "event": "e", "userId": "u", "timestamp": "2026-01-01T00:00:00"},
      "no UTC offset")],
)  # fmt: skip
def test_segment_messages_that_cannot_be_stored_are_rejected(
    message: dict[str, Any], error: str
) -> None:
    with pytest.raises(InvalidEvent, match=error):
        segment_row(message)


def posthog_row(event: dict[str, Any], **envelope: Any) -> Any:
    body = json.dumps({"api_key": "emw_x", "batch": [event], **envelope}).encode()
    request = posthog.parse(body, {})
    mapped = posthog.message(request.events[0], request, received_at=NOW, **LIMITS)
    return sdk.to_row_from(mapped, project_id=1, received_at=NOW, max_future=timedelta(days=1))


def test_posthog_fields_map_and_person_fields_are_kept() -> None:
    event = {
        "event": "$identify", "distinct_id": "u-9", "uuid": "0190-a", "options": {"x": 1},
        "timestamp": "2026-11-29T11:58:00+00:00", "$set": {"email": "a@b.c"},
        "properties": {"$lib": "posthog-python", "token": "emw_x", "plan": "pro"},
    }  # fmt: skip
    row = posthog_row(event, sent_at="2026-11-29T11:59:00+00:00")
    assert (row.event_name, row.user_id, row.idempotency_key) == ("$identify", "u-9", "0190-a")
    assert row.channel == "posthog-python"
    assert row.ts == NOW - timedelta(minutes=1)
    stored = json.loads(row.properties or "{}")
    assert stored["$set"] == {"email": "a@b.c"}
    assert stored["$posthog"] == {"options": {"x": 1}}
    assert "token" not in stored and stored["plan"] == "pro"


def test_posthog_js_puts_the_distinct_id_and_token_in_properties() -> None:
    properties = {"distinct_id": "d1", "token": "emw_t", "$lib": "web"}
    body = json.dumps([{"event": "$pageview", "offset": 1500, "properties": properties}])
    request = posthog.parse(body.encode(), {"_": "1795984866110"})
    assert posthog.key_in_events(request) == "emw_t"
    mapped = posthog.message(request.events[0], request, received_at=NOW, **LIMITS)
    row = sdk.to_row_from(mapped, project_id=1, received_at=NOW, max_future=timedelta(days=1))
    assert (row.user_id, row.channel) == ("d1", "web")
    assert row.ts == NOW - timedelta(milliseconds=1500)


async def test_bodies_bounded_and_refused_as_a_whole() -> None:
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
    with pytest.raises(PayloadTooLarge):
        await sdk.json_body(bomb, content_type="text/plain", max_bytes=10_000)
    with pytest.raises(MalformedPayload):
        await sdk.json_body(b"data=%%%", content_type=sdk.FORM, max_bytes=10_000)
    with pytest.raises(MalformedPayload, match="ambiguous"):
        segment.parse(b'{"batch": [], "batch": []}', "/v1/batch")
    with pytest.raises(MalformedPayload):
        posthog.parse(b"not json", {})


async def test_form_data_may_be_json_or_url_safe_base64() -> None:
    payload = json.dumps({"api_key": "k", "event": "e"}).encode()
    plain = b"data=" + urllib.parse.quote(payload).encode()
    assert await sdk.json_body(plain, content_type=sdk.FORM, max_bytes=10_000) == payload
    url_safe = base64.urlsafe_b64encode(payload).rstrip(b"=")
    assert (
        await sdk.json_body(b"data=" + url_safe, content_type=sdk.FORM, max_bytes=10_000) == payload
    )
