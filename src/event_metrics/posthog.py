"""PostHog's capture API, as posthog-python, posthog-js and the other PostHog SDKs speak
it: /batch, /capture, /e, /i/v0/e and /track (each with or without a trailing slash).

Bodies: {"api_key", "batch": [events], "sent_at"}, a single event with its `api_key`, or
(older posthog-js) a bare array of events whose time is an `offset` in milliseconds
before sending. The project token comes as `api_key` or `token` in the body, as
`properties.token` on the events (posthog-js), or as a Bearer key.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from event_metrics import json_checks, sdk
from event_metrics.events import InvalidEvent
from event_metrics.payload import MalformedPayload

PATHS = ("/batch", "/capture", "/e", "/i/v0/e", "/track", "/i/v0/ai/batch")
# Fields with a column of their own, and what is never stored: the token (a secret) and
# the per-attempt clocks.
MAPPED = frozenset({"event", "distinct_id", "uuid", "timestamp", "properties", "api_key",
                    "token", "sent_at", "offset"})  # fmt: skip
PERSON_FIELDS = ("$set", "$set_once")  # kept under their own names, as PostHog does
HIDDEN_PROPERTIES = frozenset({"token"})


class Request(msgspec.Struct):
    events: list[msgspec.Raw]
    key: str | None
    sent_at: datetime | None
    nesting: int  # levels above the events: {"batch": [...]} 2, [...] 1, an event 0
    # The body as the checks every event must pass decoded it (sdk.checked_body), when
    # it passed them: its events need no check of their own.
    decoded: Any = None
    text: bytes = b""  # the events' JSON text: the array, or the event itself


_events = msgspec.json.Decoder(list[msgspec.Raw])


def parse(text: bytes, query: dict[str, str]) -> Request:
    """Split a body into events; whole-body problems raise MalformedPayload."""
    outer = sdk.envelope(text)
    sent_at = _query_clock(query.get("_"))
    if isinstance(outer, list):
        return Request(outer, None, sent_at, nesting=1, text=text)
    nesting = 0
    items = text
    if "batch" in outer:
        nesting = 2
        try:
            events = _events.decode(outer["batch"])
        except msgspec.ValidationError:
            raise MalformedPayload('"batch" must be a list of events') from None
        items = bytes(outer["batch"])
    else:
        events = [msgspec.Raw(text)]
    key = sdk.text_of(outer.get("api_key")) or sdk.text_of(outer.get("token"))
    with contextlib.suppress(InvalidEvent):  # an unreadable clock only skips skew correction
        sent_at = sdk.instant(sdk.text_of(outer.get("sent_at")), "sent_at") or sent_at
    return Request(events, key, sent_at, nesting, text=items)


def key_in_events(request: Request) -> str | None:
    """posthog-js puts the token in each event's properties: without a key of its own, a
    request is authorized by its first event's (each event then goes to its own token's
    project: ingest.py)."""
    for raw in request.events[:1]:
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return None
        properties = value.get("properties") if isinstance(value, dict) else None
        if isinstance(properties, dict) and isinstance(properties.get("token"), str):
            return str(properties["token"])
    return None


class Properties(msgspec.Struct):
    """The properties that map onto columns or are never stored."""

    lib: Any = msgspec.field(default=None, name="$lib")
    distinct_id: Any = None
    token: Any = msgspec.field(default=msgspec.UNSET, name="token")


class Fields(msgspec.Struct):
    """The fields of an event that map onto columns (the others stay raw)."""

    api_key: Any = None
    token: Any = None
    event: Any = None
    distinct_id: Any = None
    uuid: Any = None
    timestamp: Any = None
    offset: Any = None
    channel: Any = None
    properties: Properties | None = None


_fields = msgspec.json.Decoder(Fields)


def message(
    raw: msgspec.Raw, request: Request, *, received_at: datetime, max_event_bytes: int,
    max_depth: int, max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> sdk.Message:  # fmt: skip
    """One PostHog event mapped onto our columns (docs/api.md has the table)."""
    sdk.check(
        raw, max_event_bytes=max_event_bytes, max_depth=max_depth, max_digits=max_digits,
        deep=request.decoded is None,
    )  # fmt: skip
    members = sdk.members(raw)
    try:
        value = _fields.decode(raw)
    except msgspec.ValidationError:
        raise InvalidEvent("properties must be a JSON object") from None
    plain = value.properties or Properties()
    timestamp = sdk.instant(value.timestamp, "timestamp")
    sent_at = request.sent_at if timestamp is not None else None
    offset = value.offset
    if timestamp is None and isinstance(offset, int | float) and not isinstance(offset, bool):
        # Older posthog-js: milliseconds before the request was sent, so before it arrived
        # (the client's clock never enters).
        try:
            timestamp = received_at - timedelta(milliseconds=offset)
        except OverflowError:
            raise InvalidEvent("offset is out of range", "bad_timestamp") from None
    reserved = {k: bytes(v) for k, v in members.items() if k in PERSON_FIELDS}
    rest = {k: v for k, v in members.items() if k not in MAPPED and k not in PERSON_FIELDS}
    if rest:
        reserved["$posthog"] = sdk.object_text(rest)
    properties = members.get("properties")
    own_key, key_field = event_key(value.api_key, value.token, plain)
    if isinstance(plain.token, str) and properties is not None:  # posthog-js sends it
        own = sdk.members(properties)
        shown = {k: v for k, v in own.items() if k not in HIDDEN_PROPERTIES}
        properties = msgspec.Raw(sdk.object_text(shown))
    user_id = id_of(value.distinct_id)
    return sdk.Message(
        event_name=value.event,
        user_id=user_id or id_of(plain.distinct_id),
        key=value.uuid,
        timestamp=timestamp,
        sent_at=sent_at,
        channel=value.channel or plain.lib,
        properties=properties,
        reserved=reserved,
        names=NAMES[bool(user_id or not plain.distinct_id), key_field],
        project_key=own_key,
    )


def event_key(api_key: Any, token: Any, plain: Properties) -> tuple[str | None, str]:
    """The event's own token and where it was: its `api_key` or `token` (PostHog's capture
    reads those first), else `properties.token` (posthog-js puts it on every event)."""
    for key, field in ((api_key, "api_key"), (token, "token"),
                       (plain.token, "properties.token")):  # fmt: skip
        if isinstance(key, str):
            return key, field
    return None, "api_key"


# Our columns by the names PostHog's clients give them (reasons for a refusal use these),
# by whether the user is `distinct_id` and where the event's own token was.
_BASE = {"event_name": "event", "idempotency_key": "uuid", "channel": "properties.$lib",
         "timestamp": "timestamp", "sent_at": "sent_at"}  # fmt: skip
NAMES = {
    (top_level, key_field): {
        **_BASE,
        "user_id": "distinct_id" if top_level else "properties.distinct_id",
        "project_key": key_field,
    }
    for top_level in (True, False)
    for key_field in ("api_key", "token", "properties.token")
}


def id_of(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value or None


def _query_clock(value: str | None) -> datetime | None:
    # Older posthog-js sends its clock as `_=<epoch milliseconds>` in the query string.
    if not value or not value.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def answer(accepted: int, duplicates: int, rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """What PostHog's SDKs expect (exactly 200, `status: 1`), with what happened to each."""
    return {"status": 1, "accepted": accepted, "duplicates": duplicates, "rejected": rejected}
