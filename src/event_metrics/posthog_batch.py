"""A PostHog request's events mapped in one pass: a body that passed the checks whole is
decoded in one call into Typed structs, one per event, and each is mapped from its fields
without decoding the rest (its properties are stored from their text, posthog-js's token
cut out of it). `posthog.message`, one event at a time, maps the others: an event with a
field no SDK sends, or one this pass finds unusual, so that a refusal always has the same
reason. tests/unit/test_sdk_batches.py holds the two to the same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from event_metrics import json_checks, posthog, sdk
from event_metrics.events import InvalidEvent
from event_metrics.schema import Row


def rows(
    request: posthog.Request, destination: sdk.Destination, *, max_event_bytes: int,
    max_depth: int, max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> Iterator[Row | sdk.Message | InvalidEvent]:  # fmt: skip
    """Each event of a request, in order, as its row in the destination's project; or
    mapped, when it carries a token of its own (its project comes first), or when the row
    is made by `sdk.to_row_from`; or why it cannot be stored. One at a time: the caller
    may let other requests run between them."""
    typed = (
        _typed.decode(request.text, request.events, request.nesting)
        if request.decoded is not None
        else None
    )
    decoded: list[Any] = [None] * len(request.events)
    if typed is None:
        typed = decoded
    else:  # the same events as the checks decoded them, to read values from
        decoded = sdk.decoded_items(request.decoded, request.nesting)
    # An event fits when the whole list does; else each is measured.
    sizes = len(request.text) > max_event_bytes
    for raw, value, fields in zip(request.events, typed, decoded, strict=True):
        try:
            if value is not None and sizes and len(raw) > max_event_bytes:
                raise InvalidEvent(
                    f"event is {len(raw)} bytes; the limit is {max_event_bytes}", "too_large"
                )
            outcome = None if value is None else _one(value, fields, request, destination)
            yield outcome or posthog.message(
                raw, request, received_at=destination.received_at,
                max_event_bytes=max_event_bytes, max_depth=max_depth, max_digits=max_digits,
            )  # fmt: skip
        except InvalidEvent as exc:
            yield exc


EMPTY = msgspec.Raw(b"")  # a field the event does not have


class Typed(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An event holding only fields PostHog's SDKs send: the mapped ones by value, the
    others as their JSON text. A whole batch of them decodes in one call. An event with
    any other field (or not an object) is mapped by `message` instead."""

    # mapped onto columns, or never stored
    event: Any = None
    distinct_id: Any = None
    uuid: Any = None
    timestamp: Any = None
    api_key: Any = None
    token: Any = None
    sent_at: Any = None
    offset: Any = None
    properties: msgspec.Raw = EMPTY
    # kept under their own names
    set: msgspec.Raw = msgspec.field(default=EMPTY, name="$set")
    set_once: msgspec.Raw = msgspec.field(default=EMPTY, name="$set_once")
    # kept in $posthog (channel is read too)
    channel: msgspec.Raw = EMPTY
    type: msgspec.Raw = EMPTY
    library: msgspec.Raw = EMPTY
    library_version: msgspec.Raw = EMPTY


_typed = sdk.TypedDecoder(Typed)


_HIDDEN_TEXT = b'"token"'


def _one(
    value: Typed, fields: dict[str, Any], request: posthog.Request,
    destination: sdk.Destination,
) -> Row | sdk.Message | None:  # fmt: skip
    """The row of an event, or what `posthog.message` makes of it (see `rows`), or None
    where `posthog.message` would refuse it. The
    properties it reads come from `fields`, the event as the checks decoded it, where
    numbers with a fraction or exponent are 0.0: where such a number would decide
    something (what `or` picks, a user id made of a number), the event is left to
    `posthog.message` too."""
    own = bytes(value.properties) if value.properties else b"{}"
    properties = fields.get("properties")
    if properties is None:
        properties = {}
    elif type(properties) is not dict:
        return None
    lib, distinct_id = properties.get("$lib"), properties.get("distinct_id")
    channel = fields.get("channel")
    if type(distinct_id) is float or type(channel) is float:
        return None
    timestamp = sdk.instant(value.timestamp, "timestamp")
    if timestamp is None and value.offset is not None:
        return None  # older posthog-js: `message` reads the offset
    token = properties.get("token", msgspec.UNSET)
    if type(token) is str and value.properties:
        own = _without_token(own, token)
    reserved = {}
    if value.set:
        reserved["$set"] = bytes(value.set)
    if value.set_once:
        reserved["$set_once"] = bytes(value.set_once)
    if value.channel or value.type or value.library or value.library_version:
        reserved["$posthog"] = _encode(msgspec.structs.replace(
            value, event=None, distinct_id=None, uuid=None, timestamp=None, api_key=None,
            token=None, sent_at=None, offset=None, properties=EMPTY, set=EMPTY, set_once=EMPTY,
        ))  # fmt: skip
    if own == b"null":
        own = b"{}"
    if not reserved:
        stored = own.decode() if own != b"{}" else None
    else:
        stored = sdk.compose(msgspec.Raw(own), reserved)
    plain = posthog.Properties(lib, distinct_id, token)
    own_key, key_field = posthog.event_key(value.api_key, value.token, plain)
    user_id = posthog.id_of(value.distinct_id)
    user = user_id or posthog.id_of(distinct_id)
    sent_at = request.sent_at if timestamp is not None else None
    names = posthog.NAMES[bool(user_id or not distinct_id), key_field]
    if own_key is None or own_key == destination.key:
        event = sdk.event_of(value.event, user, value.uuid, channel or lib)
        if event is not None:
            event.timestamp, event.sent_at = timestamp, sent_at
            return sdk.row_of(event, stored, names, destination)
    return sdk.Message(
        event_name=value.event, user_id=user, key=value.uuid, timestamp=timestamp,
        sent_at=sent_at, channel=channel or lib, properties=value.properties or None,
        reserved=reserved, names=names, project_key=own_key, stored=stored,
    )  # fmt: skip


def _without_token(own: bytes, token: str) -> bytes:
    """The properties' text without their `token` member (a secret, never stored)."""
    text = msgspec.json.encode(token)
    # Without a backslash the member is written `"token": <its text>` once at most, at
    # the top level (the caller knows it is there): cut it out of the text.
    if b"\\" not in own and own.count(_HIDDEN_TEXT) == 1:
        start = own.find(_HIDDEN_TEXT)
        after = own.find(b":", start + len(_HIDDEN_TEXT)) + 1
        value_at = own.find(text, after)
        if after and value_at != -1 and not own[after:value_at].strip():
            end = value_at + len(text)
            before = own[:start].rstrip()
            if before.endswith(b","):  # "a": 1, "token": "x" -> "a": 1
                return before[:-1] + own[end:]
            following = own[end:].lstrip()  # {"token": "x", "a": 1} -> {"a": 1}
            return before + (following[1:] if following[:1] == b"," else following)
    members = sdk.members(own)
    return sdk.object_text({k: v for k, v in members.items() if k not in posthog.HIDDEN_PROPERTIES})


_encode = msgspec.json.Encoder().encode
