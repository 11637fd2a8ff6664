"""A Segment request's messages mapped in one pass: a body that passed the checks whole is
decoded in one call into Typed structs, one per message, and each is mapped from its
fields without decoding the rest (what `$segment` keeps is the struct written back, each
field as the text the client sent). `segment.message`, one message at a time, maps the
others: a message with a field no SDK sends, or one this pass finds unusual, so that a
refusal always has the same reason. tests/unit/test_sdk_batches.py holds the two to
the same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from event_metrics import json_checks, sdk, segment
from event_metrics.events import InvalidEvent
from event_metrics.schema import Row


def rows(
    request: segment.Request,
    destination: sdk.Destination,
    *,
    max_event_bytes: int,
    max_depth: int,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> Iterator[Row | sdk.Message | InvalidEvent]:
    """Each message of a request, in order, as its row in the destination's project; or
    mapped, when it carries a key of its own (its project comes first), or when the row
    is made by `sdk.to_row_from`; or why it cannot be stored. One at a time: the caller
    may let other requests run between them."""
    limits = {"max_event_bytes": max_event_bytes, "max_depth": max_depth,
              "max_digits": max_digits}  # fmt: skip
    typed = (
        _typed.decode(request.text, request.messages, request.nesting)
        if request.decoded is not None
        else None
    )
    decoded: list[Any] = [None] * len(request.messages)
    if typed is None:
        typed = decoded
    else:  # the same messages as the checks decoded them, to read values from
        decoded = sdk.decoded_items(request.decoded, request.nesting)
    # A message fits when the whole list does; else each is measured.
    sizes = len(request.text) > max_event_bytes
    # Without "$segment" or an escape anywhere, no message's own properties can hold the
    # reserved name: $segment is added without looking.
    plain = b'"$segment"' not in request.text and b"\\u" not in request.text
    for raw, value, fields in zip(request.messages, typed, decoded, strict=True):
        try:
            if value is not None and sizes and len(raw) > max_event_bytes:
                raise InvalidEvent(
                    f"message is {len(raw)} bytes; the limit is {max_event_bytes}", "too_large"
                )
            outcome = None if value is None else _one(value, fields, request, plain, destination)
            yield outcome or segment.message(raw, request, **limits)
        except InvalidEvent as exc:
            yield exc


EMPTY = msgspec.Raw(b"")  # a field the message does not have


class Typed(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A message holding only fields Segment's SDKs send: the mapped ones by value, the
    others as their JSON text. A whole batch of them decodes in one call, and what is kept
    in `$segment` is this struct encoded without the mapped fields (each Raw as it was sent).
    A message with any other field (or not an object) is mapped by `message` instead."""

    # mapped onto columns, or never stored
    event: Any = None
    userId: Any = None
    messageId: Any = None
    timestamp: Any = None
    sentAt: Any = None
    writeKey: Any = None
    properties: msgspec.Raw = EMPTY
    # kept in $segment; the first four are read too
    type: msgspec.Raw = EMPTY
    anonymousId: msgspec.Raw = EMPTY
    originalTimestamp: msgspec.Raw = EMPTY
    channel: msgspec.Raw = EMPTY
    context: msgspec.Raw = EMPTY
    integrations: msgspec.Raw = EMPTY
    traits: msgspec.Raw = EMPTY
    name: msgspec.Raw = EMPTY
    category: msgspec.Raw = EMPTY
    groupId: msgspec.Raw = EMPTY
    previousId: msgspec.Raw = EMPTY
    metadata: msgspec.Raw = msgspec.field(default=EMPTY, name="_metadata")  # analytics.js
    receivedAt: msgspec.Raw = EMPTY
    version: msgspec.Raw = EMPTY


_TYPE_TEXTS = {name: msgspec.Raw(msgspec.json.encode(name)) for name in segment.TYPES}
_typed = sdk.TypedDecoder(Typed)


def _one(
    value: Typed, fields: dict[str, Any], request: segment.Request, plain: bool,
    destination: sdk.Destination,
) -> Row | sdk.Message | None:  # fmt: skip
    """The row of a message, or what `segment.message` makes of it (see `rows`), or None
    where `segment.message` would refuse it. The
    values of fields kept as text are read from `fields`, the message as the checks decoded
    it, where numbers with a fraction or exponent are 0.0: where such a number would
    decide something (what `or` picks, a user id made of a number), the message is left
    to `segment.message` too."""
    kind, channel, anonymous = fields.get("type"), fields.get("channel"), fields.get("anonymousId")
    if float in (type(kind), type(channel), type(anonymous)):
        return None
    kind = kind or request.route_type
    if kind not in segment.TYPES:
        return None
    name = value.event if kind == "track" else kind
    own = bytes(value.properties) if value.properties else b"{}"
    if type(name) is not str or (own[:1] != b"{" and own != b"null"):
        return None
    if not channel:  # else context.channel, else context.library.name
        context = fields.get("context")
        if type(context) is dict:
            channel, library = context.get("channel"), context.get("library")
            if type(channel) is float:
                return None
            channel = channel or (library.get("name") if type(library) is dict else None)
    kept = _encode(msgspec.structs.replace(
        value, event=None, userId=None, messageId=None, timestamp=None, sentAt=None,
        writeKey=None, properties=EMPTY, type=value.type or _TYPE_TEXTS[kind],
    ))  # fmt: skip
    if own == b"null":
        own = b"{}"
    if plain:
        stored = (own[:-1] + (b',"$segment":' if own != b"{}" else b'"$segment":') + kept
                  + b"}").decode()  # fmt: skip
    else:
        stored = sdk.with_block(own, "$segment", kept)
    user_id = segment.id_of(value.userId)
    timestamp, time_field = value.timestamp, "timestamp"
    if not timestamp:
        timestamp, time_field = fields.get("originalTimestamp"), "originalTimestamp"
    user, key = user_id or segment.id_of(anonymous), segment.id_of(value.messageId)
    moment = sdk.instant(timestamp, time_field)
    sent_at = sdk.instant(value.sentAt, "sentAt") or request.sent_at
    names = segment.NAMES[user_id is not None, anonymous is not None, time_field]
    project_key = value.writeKey if type(value.writeKey) is str else None
    if project_key is None or project_key == destination.key:
        event = sdk.event_of(name, user, key, channel)
        if event is not None:
            event.timestamp, event.sent_at = moment, sent_at
            return sdk.row_of(event, stored, names, destination)
    return sdk.Message(
        event_name=name, user_id=user, key=key, timestamp=moment, sent_at=sent_at,
        channel=channel, properties=value.properties or None, reserved={"$segment": kept},
        names=names, project_key=project_key, stored=stored,
    )  # fmt: skip


_encode = msgspec.json.Encoder().encode
