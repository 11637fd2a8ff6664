"""A PostHog request's events mapped in one pass: a body that passed the checks whole is
decoded in one call into Typed structs, one per event, and each is mapped from its fields
without decoding the rest (its properties are stored from their text, posthog-js's token
cut out of it). `posthog.message`, one event at a time, maps the others: an event with a
field no SDK sends, or one this pass finds unusual, so that a refusal always has the same
reason. tests/unit/test_sdk_batches.py holds the two to the same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec

from event_metrics import json_checks, posthog, sdk
from event_metrics.events import InvalidEvent


def messages(
    request: posthog.Request, *, received_at: datetime, max_event_bytes: int, max_depth: int,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> Iterator[sdk.Message | InvalidEvent]:  # fmt: skip
    """Each event of a request mapped onto our columns, or why it cannot be, in order (one
    at a time: the caller may let other requests run between them)."""
    typed = _typed(request) if request.checked else None
    if typed is None:
        typed = [None] * len(request.events)
    # An event fits when the whole list does; else each is measured.
    sizes = len(request.text) > max_event_bytes
    for raw, value in zip(request.events, typed, strict=True):
        try:
            if value is not None and sizes and len(raw) > max_event_bytes:
                raise InvalidEvent(
                    f"event is {len(raw)} bytes; the limit is {max_event_bytes}", "too_large"
                )
            outcome = None if value is None else _one(*value, request)
            yield outcome or posthog.message(
                raw, request, received_at=received_at, max_event_bytes=max_event_bytes,
                max_depth=max_depth, max_digits=max_digits,
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


class Peek(msgspec.Struct):
    """The properties an event's columns come from, read beside Typed."""

    properties: posthog.Properties | None = None


_typed_list = msgspec.json.Decoder(list[Typed])
_typed_one = msgspec.json.Decoder(Typed)
_peek_list = msgspec.json.Decoder(list[Peek])
_peek_one = msgspec.json.Decoder(Peek)


def _typed(request: posthog.Request) -> list[tuple[Typed, posthog.Properties] | None] | None:
    """The request's events as Typed with their properties (None for one that is not),
    or None if none is."""
    try:
        if request.nesting == 0:
            typed, peeks = [_typed_one.decode(request.text)], [_peek_one.decode(request.text)]
        else:
            typed, peeks = _typed_list.decode(request.text), _peek_list.decode(request.text)
        return [(t, p.properties or _NONE) for t, p in zip(typed, peeks, strict=True)]
    except msgspec.ValidationError:
        pass
    each: list[tuple[Typed, posthog.Properties] | None] = []
    for raw in request.events:
        try:
            each.append((_typed_one.decode(raw), _peek_one.decode(raw).properties or _NONE))
        except msgspec.ValidationError:
            each.append(None)
    return each if any(t is not None for t in each) else None


_NONE = posthog.Properties()
_HIDDEN_TEXT = b'"token"'


def _one(value: Typed, plain: posthog.Properties, request: posthog.Request) -> sdk.Message | None:
    """What `message` makes of a Typed event, or None where it would refuse it."""
    own = bytes(value.properties) if value.properties else b"{}"
    if own[:1] != b"{" and own != b"null":
        return None
    timestamp = sdk.instant(value.timestamp, "timestamp")
    sent_at = request.sent_at if timestamp is not None else None
    offset = value.offset
    if timestamp is None and offset is not None:
        return None  # older posthog-js: `message` reads the offset
    if isinstance(plain.token, str) and value.properties:
        own = _without_token(own, plain.token)
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
    own_key, key_field = posthog.event_key(value.api_key, value.token, plain)
    user_id = posthog.id_of(value.distinct_id)
    return sdk.Message(
        event_name=value.event,
        user_id=user_id or posthog.id_of(plain.distinct_id),
        key=value.uuid,
        timestamp=timestamp,
        sent_at=sent_at,
        channel=(_value.decode(value.channel) if value.channel else None) or plain.lib,
        properties=value.properties or None,
        reserved=reserved,
        names=posthog.NAMES[bool(user_id or not plain.distinct_id), key_field],
        project_key=own_key,
        stored=stored,
    )


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
_value = msgspec.json.Decoder()
