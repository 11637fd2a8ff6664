"""What the SDK protocols (segment.py, posthog.py) share: reading the bodies SDKs send,
finding their keys, and turning one SDK message into our row without losing anything.

SDK bodies come as JSON, as `text/plain` JSON (browsers avoid a CORS preflight that way),
gzipped with or without a `Content-Encoding` header (posthog-js sends bare gzip), or as a
form whose `data` field is base64 or JSON (posthog-js). Everything a message carries that
has no column of its own is kept in the stored properties under a reserved key, so it can
be read back or re-derived later.
"""

from __future__ import annotations

import base64
import binascii
import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from event_metrics import inflate, json_checks
from event_metrics.events import EventIn, InvalidEvent, to_row
from event_metrics.payload import MalformedPayload
from event_metrics.schema import Row

GZIP_MAGIC = b"\x1f\x8b"
FORM = "application/x-www-form-urlencoded"
_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode


async def json_body(body: bytes, *, content_type: str | None, max_bytes: int) -> bytes:
    """The JSON text of an SDK request body, whatever wrapping the SDK chose."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == FORM:
        body = _form_data(body)
    if body[:2] == GZIP_MAGIC:  # posthog-js gzips without saying so
        # Bounded, linear and in steps (inflate.py): the key may be inside, so anyone
        # can make the server unpack this.
        body = await inflate.gunzip(body, max_bytes)
    return body


# posthog-js sends one field (`data`), older versions two or three (`compression`, `ver`);
# the bound keeps a form of a million empty fields from holding the event loop.
MAX_FORM_FIELDS = 20


def _form_data(body: bytes) -> bytes:
    count = body.count(b"&") + 1  # what parse_qs splits on, counted before the work
    if count > MAX_FORM_FIELDS:
        raise MalformedPayload(
            f"a form body may have at most {MAX_FORM_FIELDS} fields (the events go in its"
            f" 'data' field); this one has {count}"
        )
    fields = urllib.parse.parse_qs(body, keep_blank_values=True)
    values = fields.get(b"data")
    if not values:
        raise MalformedPayload("a form body must carry the events in its 'data' field")
    if len(values) > 1:
        raise MalformedPayload("body is ambiguous: the form's 'data' field appears twice")
    data = values[0].strip()
    if data[:1] in (b"{", b"["):
        return data
    try:
        padded = data + b"=" * (-len(data) % 4)
        return base64.b64decode(padded.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except binascii.Error:
        raise MalformedPayload("the form's 'data' field is neither JSON nor base64") from None


def envelope(text: bytes) -> dict[str, msgspec.Raw] | list[msgspec.Raw]:
    """The body's outer JSON value: an object by its keys, or an array of its items."""
    try:
        text.decode("utf-8")
        if text.lstrip()[:1] == b"[":
            items: list[msgspec.Raw] = msgspec.json.decode(text, type=list[msgspec.Raw])
            return items
        fields = _raw_object.decode(text)
    except UnicodeDecodeError:
        raise MalformedPayload("body is not valid UTF-8") from None
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise MalformedPayload(f"body is not a JSON object or array: {exc}") from None
    # A repeated outer key ({"batch": [A], "\u0062atch": [B]}) is ambiguous: the decoder
    # kept B alone.
    try:
        repeated = json_checks.repeats_a_key(text, fields)
    except json_checks.InvalidJSON as exc:
        raise MalformedPayload(f"body is not a JSON object or array: {exc}") from None
    if repeated:
        raise MalformedPayload("body is ambiguous: a key appears twice")
    return fields


def text_of(raw: msgspec.Raw | None) -> str | None:
    """A JSON string value's text; None for absent, null, or anything not a string."""
    if raw is None:
        return None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None


def instant(value: Any, field: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time with an offset (naive times are refused); `field` is
    the client's name for it, for the reason a bad one is refused."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(
            f"{field}: {value[:40]!r} is not an ISO 8601 time", "bad_timestamp"
        ) from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"{field}: {value[:40]!r} has no UTC offset", "bad_timestamp")
    return moment


def checked_body(
    text: bytes, *, max_depth: int, max_digits: int = json_checks.MAX_NUMBER_DIGITS
) -> Any:
    """The body as decoded by the checks every message must pass (numbers as 0 or 0.0:
    the text is what is stored), or None when some part fails them. Then its messages
    need no check of their own (one pass over the body costs far less than one per
    message), and their fields can be read from it. `max_depth` counts the levels above
    the messages too."""
    try:
        # The size bound is each message's: a body whose numbers grow at all when written
        # out is checked message by message.
        return json_checks.decode(
            text, max_depth=max_depth, max_digits=max_digits, max_bytes=len(text), many=True
        )
    except json_checks.InvalidJSON:
        return None  # some message is bad: each is checked on its own, to say which


def decoded_items(decoded: Any, nesting: int) -> list[Any]:
    """The messages of a body checked_body decoded: {"batch": [...]} (nesting 2), [...]
    (1), or the message itself (0)."""
    if nesting == 2:
        return list(decoded["batch"])
    return list(decoded) if nesting == 1 else [decoded]


def body_is_clean(
    text: bytes, *, max_depth: int, max_digits: int = json_checks.MAX_NUMBER_DIGITS
) -> bool:
    """Whether a whole body passes the checks every message must pass (checked_body)."""
    return checked_body(text, max_depth=max_depth, max_digits=max_digits) is not None


def check(
    raw: msgspec.Raw,
    *,
    max_event_bytes: int,
    max_depth: int,
    deep: bool,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> None:
    """The same checks as a native event's properties (`deep`: unless the whole body was
    checked already), one level deeper: the message itself is the outer level."""
    if len(raw) > max_event_bytes:
        raise InvalidEvent(
            f"message is {len(raw)} bytes; the limit is {max_event_bytes}", "too_large"
        )
    if deep:
        try:
            json_checks.decode(
                raw, max_depth=max_depth + 1, max_digits=max_digits, max_bytes=max_event_bytes
            )
        except json_checks.TooLargeWrittenOut as exc:
            raise InvalidEvent(f"message is {exc}", "too_large") from None
        except json_checks.InvalidJSON as exc:
            raise InvalidEvent(str(exc), "invalid_json") from None


def members(raw: msgspec.Raw | bytes) -> dict[str, msgspec.Raw]:
    """The members of a JSON object by name, each as its JSON text."""
    try:
        return _raw_object.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise InvalidEvent("a message must be a JSON object") from None


class Message(msgspec.Struct):
    """What one SDK message maps to, by column (docs/api.md has the table)."""

    event_name: Any
    user_id: Any
    key: Any
    timestamp: datetime | None
    sent_at: datetime | None
    channel: Any
    properties: msgspec.Raw | None  # the user's own, as sent
    reserved: dict[str, bytes] = {}  # JSON texts kept under $keys (msgspec copies it)
    # The client's name of the field each column came from, for the reasons a message is
    # refused: the client knows `distinct_id`, not our `user_id`.
    names: Mapping[str, str] = {}
    # The message's own write key, when it carries one (its project's, whatever the
    # request's key is); names["project_key"] says where it was.
    project_key: str | None = None
    # compose(properties, reserved), when the mapping knew it could not fail and made it.
    stored: str | msgspec.UnsetType | None = msgspec.UNSET


def to_row_from(
    message: Message, *, project_id: int, received_at: datetime, max_future: timedelta
) -> Row:
    """The row of a message, checked like a native event (lengths, NUL, times)."""
    name, user, key, channel = message.event_name, message.user_id, message.key, message.channel
    event = event_of(name, user, key, channel)
    if event is None:  # msgspec.convert says why
        channel = channel[:200] if type(channel) is str and channel else None
        fields = {"event_name": name, "user_id": user}
        if key is not None:
            fields["idempotency_key"] = key
        if channel is not None:
            fields["channel"] = channel
        try:
            event = msgspec.convert(fields, EventIn)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(_in_client_words(str(exc), fields, message.names)) from None
    event.timestamp = message.timestamp
    event.sent_at = message.sent_at
    stored = message.stored
    if stored is msgspec.UNSET:
        stored = compose(message.properties, message.reserved)
    return row_of(event, stored, message.names, Destination(project_id, None, received_at,
                                                              max_future))  # fmt: skip


def event_of(name: Any, user: Any, key: Any, channel: Any) -> EventIn | None:
    """The EventIn of these columns (the channel cut to 200 characters), or None where
    msgspec.convert into EventIn would refuse them: what it checks, without building a
    dict for it (a fifth of a message's cost)."""
    # events.Name and events.Key: a string of 1 to 200 characters.
    if (
        type(name) is str and 0 < len(name) <= 200 and type(user) is str and 0 < len(user) <= 200
        and (key is None or (type(key) is str and 0 < len(key) <= 200))
    ):  # fmt: skip
        channel = channel[:200] if type(channel) is str and channel else None
        return EventIn(name, user, idempotency_key=key, channel=channel)
    return None


class Destination(NamedTuple):
    """Where the messages of a request go unless they carry a key of their own: the
    project of the request's key, and the clock their times are checked against."""

    project_id: int
    key: str | None
    received_at: datetime
    max_future: timedelta


def row_of(
    event: EventIn, stored: str | None, names: Mapping[str, str], destination: Destination
) -> Row:
    """events.to_row, refusing in the client's names ("distinct_id must not contain NUL",
    "originalTimestamp ... is ahead")."""
    try:
        return to_row(
            event, stored, project_id=destination.project_id,
            received_at=destination.received_at, max_future=destination.max_future,
        )  # fmt: skip
    except InvalidEvent as exc:
        column, space, rest = str(exc).partition(" ")
        if column in names:
            raise InvalidEvent(names[column] + space + rest, exc.reason) from None
        raise


def _in_client_words(error: str, fields: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """msgspec's "Expected `str`, got `null` - at `$.user_id`" as the client would say it:
    "distinct_id is missing"."""
    reason, _, path = error.rpartition(" - at `$.")
    column = path.rstrip("`")
    if not reason or column not in fields:
        return error
    name = names.get(column, column)
    if fields[column] is None:
        return f"{name} {'are' if ' and ' in name else 'is'} missing"
    return f"{name}: {reason}"


def compose(properties: msgspec.Raw | None, reserved: Mapping[str, bytes]) -> str | None:
    """The stored properties: the user's own as sent, then the reserved keys. A reserved
    name the user's properties already hold gets one more `$` in front until it is free
    (`$segment` -> `$$segment`), so neither is lost. Built from JSON texts, so numbers
    keep their digits; the message they come from was checked whole, so the result needs
    no second check."""
    own = bytes(properties) if properties is not None else b"{}"  # a Raw is exactly the value
    if own == b"null":
        own = b"{}"
    elif own[:1] != b"{":
        raise InvalidEvent("properties must be a JSON object")
    tail = []
    taken: set[str] | None = None  # the user's own names, read only when one may collide
    for name, text in reserved.items():
        key = _key(name)
        # Only a \u escape can spell a reserved name otherwise ("\u0024set" is "$set").
        if taken is None and (key in own or b"\\u" in own):
            taken = set(members(own))
        if taken is not None:
            while name in taken:
                name = "$" + name
            taken.add(name)
            key = _key(name)
        tail.append(key + b":" + text)
    if not tail:
        return own.decode() if own != b"{}" else None
    head = own[:-1].rstrip()
    if head != b"{":
        head += b","
    return (head + b",".join(tail)).decode() + "}"


def with_block(own: bytes, name: str, text: bytes) -> str:
    """compose(own, {name: text}) for `own` the text of a JSON object (the common case of
    one reserved block, without compose's general steps)."""
    key = _key(name)
    if key in own or b"\\u" in own:  # a name that may be taken: the general way
        result = compose(msgspec.Raw(own), {name: text})
        assert result is not None
        return result
    head = own[:-1].rstrip()
    return b"".join((head, b"," if head != b"{" else b"", key, b":", text, b"}")).decode()


def object_text(members: Mapping[str, msgspec.Raw]) -> bytes:
    """A JSON object from its members' texts (msgspec writes a Raw value as it is)."""
    return _encode(members)


@functools.lru_cache(maxsize=4096)  # messages of one SDK repeat the same few names
def _key(name: str) -> bytes:
    return msgspec.json.encode(name)


def now() -> datetime:
    return datetime.now(UTC)


T = TypeVar("T")


class TypedDecoder(Generic[T]):
    """A protocol's messages decoded into its typed struct: the whole body in one call when
    every message fits the struct, else message by message (None for one that does not)."""

    def __init__(self, struct: type[T]) -> None:
        self._many = msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]
        self._one = msgspec.json.Decoder(struct)

    def decode(
        self, text: bytes, items: Sequence[msgspec.Raw], nesting: int
    ) -> list[T | None] | None:
        """The messages as structs, or None if none fits (`nesting` as in decoded_items)."""
        try:
            if nesting == 0:
                return [self._one.decode(text)]
            return list(self._many.decode(text))
        except msgspec.ValidationError:
            pass
        typed: list[T | None] = []
        for raw in items:
            try:
                typed.append(self._one.decode(raw))
            except msgspec.ValidationError:
                typed.append(None)
        return typed if any(t is not None for t in typed) else None
