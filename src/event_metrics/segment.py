"""Segment's tracking API, as Segment's SDKs (analytics-python, analytics-node,
analytics.js, analytics-next) and RudderStack's speak it.

Routes: /v1/batch and /v1/import (and analytics-next's /v1/b) take {"batch": [...]};
/v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias and their one-letter
forms take one message. The write key comes as the Basic user name (what the SDKs send)
or in the body's `writeKey`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from event_metrics import json_checks, sdk
from event_metrics.events import InvalidEvent
from event_metrics.payload import MalformedPayload

TYPES = ("track", "identify", "page", "screen", "group", "alias")
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")
MESSAGE_PATHS = {f"/v1/{name}": name for name in TYPES} | {f"/v1/{name[0]}": name for name in TYPES}
PATHS = (*BATCH_PATHS, *MESSAGE_PATHS)
# Fields with a column of their own, and what is never stored: the write key (a secret)
# and sentAt (it changes on every retry of the same message).
MAPPED = frozenset({"event", "userId", "messageId", "timestamp", "properties", "writeKey",
                    "sentAt"})  # fmt: skip


class Request(msgspec.Struct):
    """A Segment request: its messages (raw), the key in the body, the envelope's clock."""

    messages: list[msgspec.Raw]
    key: str | None
    sent_at: datetime | None
    route_type: str | None
    nesting: int  # levels above the messages: {"batch": [...]} 2, [...] 1, a message 0
    # The body as the checks every message must pass decoded it (sdk.checked_body), when
    # it passed them: its messages need no check of their own.
    decoded: Any = None
    # The messages' JSON text: the array, or the message itself on a single-message route.
    text: bytes = b""


_messages = msgspec.json.Decoder(list[msgspec.Raw])


def parse(text: bytes, path: str) -> Request:
    """Split a body into messages; whole-body problems raise MalformedPayload."""
    route_type = MESSAGE_PATHS.get(path.rstrip("/"))
    outer = sdk.envelope(text)
    if isinstance(outer, list):
        return Request(outer, None, None, route_type, nesting=1, text=text)
    items = text
    if route_type is None:
        batch = outer.get("batch")
        if batch is None:
            raise MalformedPayload('a batch body is {"batch": [messages], ...}')
        try:
            messages = _messages.decode(batch)
        except msgspec.ValidationError:
            raise MalformedPayload('"batch" must be a list of messages') from None
        items = bytes(batch)
    else:
        messages = [msgspec.Raw(text)]
    try:
        sent_at = sdk.instant(sdk.text_of(outer.get("sentAt")), "sentAt")
    except InvalidEvent:
        sent_at = None
    nesting = 2 if route_type is None else 0
    key = sdk.text_of(outer.get("writeKey"))
    return Request(messages, key, sent_at, route_type, nesting, text=items)


class Fields(msgspec.Struct):
    """The fields of a message that map onto columns (the others stay raw)."""

    type: Any = None
    event: Any = None
    userId: Any = None
    anonymousId: Any = None
    messageId: Any = None
    timestamp: Any = None
    originalTimestamp: Any = None
    sentAt: Any = None
    channel: Any = None
    context: Any = None
    writeKey: Any = None


_fields = msgspec.json.Decoder(Fields)


def message(
    raw: msgspec.Raw,
    request: Request,
    *,
    max_event_bytes: int,
    max_depth: int,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> sdk.Message:
    """One Segment message mapped onto our columns (docs/api.md has the table)."""
    sdk.check(
        raw, max_event_bytes=max_event_bytes, max_depth=max_depth, max_digits=max_digits,
        deep=request.decoded is None,
    )  # fmt: skip
    members = sdk.members(raw)
    value = _fields.decode(raw)
    kind = value.type or request.route_type
    if kind not in TYPES:
        raise InvalidEvent(f"type must be one of {', '.join(TYPES)}")
    name = value.event if kind == "track" else kind
    if kind == "track" and not isinstance(name, str):
        raise InvalidEvent("a track message needs an event name")
    channel = value.channel
    if not channel and isinstance(value.context, dict):
        library = value.context.get("library")
        channel = value.context.get("channel") or (
            library.get("name") if isinstance(library, dict) else None
        )
    properties = members.pop("properties", None)
    for mapped in MAPPED.intersection(members):
        del members[mapped]  # what is left is kept
    if "type" not in members:
        members["type"] = msgspec.Raw(msgspec.json.encode(kind))
    user_id = id_of(value.userId)
    time_field = "timestamp" if value.timestamp else "originalTimestamp"
    return sdk.Message(
        event_name=name,
        user_id=user_id or id_of(value.anonymousId),
        key=id_of(value.messageId),
        timestamp=sdk.instant(value.timestamp or value.originalTimestamp, time_field),
        sent_at=sdk.instant(value.sentAt, "sentAt") or request.sent_at,
        channel=channel,
        properties=properties,
        reserved={"$segment": sdk.object_text(members)},
        names=NAMES[user_id is not None, value.anonymousId is not None, time_field],
        project_key=value.writeKey if isinstance(value.writeKey, str) else None,
    )


# Our columns by the names Segment's clients give them (reasons for a refusal use these):
# the user is `userId`, else `anonymousId`, and when neither is there, both are named.
_BASE = {"event_name": "event", "idempotency_key": "messageId", "channel": "channel",
         "sent_at": "sentAt", "project_key": "writeKey"}  # fmt: skip
NAMES = {
    (has_user, has_anonymous, time_field): {
        **_BASE,
        "timestamp": time_field,
        "user_id": "userId" if has_user else
                   "anonymousId" if has_anonymous else "userId and anonymousId",
    }
    for has_user in (True, False)
    for has_anonymous in (True, False)
    for time_field in ("timestamp", "originalTimestamp")
}  # fmt: skip


def id_of(value: Any) -> Any:
    # Ids are strings; SDKs stringify numbers, and a client that did not is taken at its word.
    if type(value) is str or value is None:
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value or None


def answer(accepted: int, duplicates: int, rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """What Segment's SDKs expect (any 2xx with `success`), with what happened to each."""
    return {"success": True, "accepted": accepted, "duplicates": duplicates, "rejected": rejected}
