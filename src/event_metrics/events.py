"""The native event format, per-event validation, and the row each valid event becomes."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

from event_metrics import json_checks
from event_metrics.schema import Row

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Channel = Annotated[str, msgspec.Meta(max_length=200)]
Instant = Annotated[datetime, msgspec.Meta(tz=True)]

# ClickHouse DateTime counts seconds from 1970 in a UInt32, so the mirror cannot hold
# anything earlier; rejecting it here keeps both engines' answers identical.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One event as a client sends it to POST /events.

    The fields are the common core of Segment `track` (event, userId, timestamp, sentAt,
    messageId, properties, context.channel) and PostHog `capture` (event, distinct_id,
    timestamp, uuid, properties), so compatibility endpoints only rename fields.
    `properties` stays the client's JSON text: it is checked, then stored as sent.
    """

    event_name: Annotated[Name, msgspec.Meta(examples=["signup"])]
    user_id: Annotated[Key, msgspec.Meta(examples=["u-1"])]
    timestamp: Annotated[Instant, msgspec.Meta(examples=["2026-11-01T09:15:00Z"])] | None = None
    idempotency_key: Annotated[Key, msgspec.Meta(examples=["web-view-7f3a9c"])] | None = None
    channel: Annotated[Channel, msgspec.Meta(examples=["web"])] | None = None
    properties: msgspec.Raw = msgspec.Raw(b"")
    sent_at: Annotated[Instant, msgspec.Meta(examples=["2026-11-01T09:15:03Z"])] | None = None


# Why an event was refused, in a word: a metric label, so a fixed and small set.
REJECTION_REASONS = ("invalid_field", "invalid_json", "too_large", "bad_timestamp", "bad_key")


class InvalidEvent(Exception):
    """One event in a request is not acceptable; the message says why, `reason` in a word
    (one of REJECTION_REASONS)."""

    def __init__(self, message: str, reason: str = "invalid_field") -> None:
        super().__init__(message)
        self.reason = reason


_decoder = msgspec.json.Decoder(EventIn)


def _float_or_text(text: str) -> float | str:
    # A float beyond a double's range (1e400) keeps its text: as a float it would fail to
    # decode (a 500 once), and as infinity two different numbers would give one key.
    number = float(text)
    return number if math.isfinite(number) else text


_values = msgspec.json.Decoder(float_hook=_float_or_text)
_encoder = msgspec.json.Encoder(order="sorted")
# A repeated field is ambiguous ({"event_name": "a", "event_name": "b"}); msgspec keeps
# the last one silently, so a field name seen twice sends the event to the exact check.
_FIELD_TOKENS = tuple(f'"{f.encode_name}"'.encode() for f in msgspec.structs.fields(EventIn))
_field_values = msgspec.structs.astuple


def parse_event(
    raw: bytes,
    *,
    project_id: int,
    received_at: datetime,
    max_event_bytes: int,
    max_future: timedelta,
    max_depth: int = 32,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> Row:
    """Validate one JSON-encoded event and turn it into a Row, or raise InvalidEvent."""
    (outcome,) = parse_events(
        [raw], project_id=project_id, received_at=received_at,
        max_event_bytes=max_event_bytes, max_future=max_future, max_depth=max_depth,
        max_digits=max_digits,
    )  # fmt: skip
    if isinstance(outcome, InvalidEvent):
        raise outcome
    return outcome


def parse_events(
    items: Sequence[bytes],
    *,
    project_id: int,
    received_at: datetime,
    max_event_bytes: int,
    max_future: timedelta,
    max_depth: int = 32,
    max_digits: int = json_checks.MAX_NUMBER_DIGITS,
) -> list[Row | InvalidEvent]:
    """Each JSON-encoded event as a Row, or the InvalidEvent saying why it is refused."""
    latest = received_at + max_future
    # The items as one JSON array's contents, for checks done on all of them at once.
    joined = b",".join(items)
    # Only an escape can spell a field's name differently or put NUL in a string (msgspec
    # refuses a raw NUL byte), so most requests need neither check.
    escaped = b"\\u" in joined
    decoded = [_decode(raw, max_event_bytes) for raw in items]
    # Most batches hold only valid properties: check them all at once, and each on its
    # own only when that fails, to say which.
    texts = [_properties_text(event) for event in decoded]
    checked = len(decoded) > 1 and json_checks.all_objects(
        [text for text in texts if text is not None], max_depth=max_depth, max_digits=max_digits
    )
    each_field_once = len(decoded) > 1 and not escaped and _each_field_once(joined, decoded, texts)
    outcomes: list[Row | InvalidEvent] = []
    for raw, event, text in zip(items, decoded, texts, strict=True):
        if isinstance(event, InvalidEvent):
            outcomes.append(event)
            continue
        try:
            if not each_field_once and ((escaped and b"\\u" in raw) or _repeats_a_field(raw)):
                try:
                    json_checks.refuse_duplicate_keys(raw)
                except json_checks.InvalidJSON as exc:
                    raise InvalidEvent(str(exc), "invalid_json") from None
            if text is not None and not checked:
                _check_properties(text, max_depth, max_digits, max_event_bytes)
            properties = None if text is None else text.decode()
            outcomes.append(_to_row(event, properties, project_id, received_at, latest, escaped))
        except InvalidEvent as exc:
            outcomes.append(exc)
    return outcomes


def _decode(raw: bytes, max_event_bytes: int) -> EventIn | InvalidEvent:
    if len(raw) > max_event_bytes:
        return InvalidEvent(f"event is {len(raw)} bytes; the limit is {max_event_bytes}",
                            "too_large")  # fmt: skip
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return InvalidEvent(_describe(str(exc)))
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        return InvalidEvent(f"not a valid JSON event: {_reason(exc)}", "invalid_json")


def _properties_text(event: EventIn | InvalidEvent) -> bytes | None:
    """The properties' JSON as sent, or None when there are none (absent or null)."""
    if isinstance(event, InvalidEvent):
        return None
    text = bytes(event.properties)
    return None if not text or text == b"null" else text


def _check_properties(text: bytes, max_depth: int, max_digits: int, max_bytes: int) -> None:
    try:
        value = json_checks.decode(
            text, max_depth=max_depth, max_digits=max_digits, max_bytes=max_bytes
        )
        if not isinstance(value, dict):
            raise InvalidEvent("properties must be a JSON object")
    except json_checks.TooLargeWrittenOut as exc:
        raise InvalidEvent(f"properties are {exc}", "too_large") from None
    except json_checks.InvalidJSON as exc:
        raise InvalidEvent(f"properties: {exc}", "invalid_json") from None


def _each_field_once(
    joined: bytes, decoded: Sequence[EventIn | InvalidEvent], texts: Sequence[bytes | None]
) -> bool:
    """True when no event of a request can repeat a field, checked on all at once.

    A field an event carries has its name at least once in the event's text, so the
    names occur in all the texts together at least as often as the events carry fields;
    exactly as often only if no event names a field twice. A name written with a \\u
    escape would not be counted: the caller sends every event to its own check when
    the request holds any escape; so does this, for a field sent as null (decoded like
    an absent one) or an event that failed to decode. `joined` is the events' texts
    with commas between: a name cannot span two events, each of which is {...}.
    """
    carried = 0
    for event, text in zip(decoded, texts, strict=True):
        if isinstance(event, InvalidEvent):
            return False
        # Every field but those left None (absent or null); properties are never None
        # (absent is an empty Raw), so they count when they have a text.
        carried += len(_FIELD_TOKENS) - _field_values(event).count(None) - (text is None)
    return sum(joined.count(token) for token in _FIELD_TOKENS) == carried


def _repeats_a_field(raw: bytes) -> bool:
    for token in _FIELD_TOKENS:  # noqa: SIM110 - any() and a generator cost more per event
        if raw.count(token) > 1:
            return True
    return False


def to_row(
    event: EventIn,
    properties: str | None,
    *,
    project_id: int,
    received_at: datetime,
    max_future: timedelta,
) -> Row:
    """Apply clock-skew correction, time bounds and key derivation to a decoded event."""
    return _to_row(event, properties, project_id, received_at, received_at + max_future)


def _to_row(
    event: EventIn, properties: str | None, project_id: int, received_at: datetime,
    latest: datetime, escaped: bool = True,
) -> Row:  # fmt: skip
    name, user, key, channel = event.event_name, event.user_id, event.idempotency_key, event.channel
    if escaped and (
        "\x00" in name or "\x00" in user or "\x00" in (key or "") or "\x00" in (channel or "")
    ):
        for field in ("event_name", "user_id", "idempotency_key", "channel"):
            if "\x00" in (getattr(event, field) or ""):
                raise InvalidEvent(f"{field} must not contain NUL characters")
    timestamp, sent_at = event.timestamp, event.sent_at
    for field, value in (("timestamp", timestamp), ("sent_at", sent_at)):
        # Only the first and last years can leave datetime's range when moved to UTC.
        if value is not None and value.year in _EDGE_YEARS and not _fits_utc(value):
            raise InvalidEvent(f"{field} is out of range", "bad_timestamp")
    if timestamp is None:
        ts = received_at  # the server's own clock: within bounds
    else:
        ts = timestamp
        if sent_at is not None:
            # The client's clock may be off; what it measured (sent_at - timestamp) is not.
            try:
                ts = received_at - (sent_at - timestamp)
            except OverflowError:
                raise InvalidEvent("sent_at - timestamp is out of range", "bad_timestamp") from None
        if ts > latest:
            raise InvalidEvent(
                f"timestamp {ts.isoformat()} is more than {latest - received_at} ahead of the"
                " server clock",
                "bad_timestamp",
            )
        if ts < EARLIEST:
            raise InvalidEvent(
                "timestamp must not be earlier than 1970-01-01T00:00:00Z", "bad_timestamp"
            )
    return Row(
        project_id=project_id, idempotency_key=key or derive_key(event, properties),
        event_name=name, user_id=user, channel=channel or "", ts=ts, received_at=received_at,
        properties=properties,
    )  # fmt: skip


def derive_key(event: EventIn, properties: str | None) -> str:
    """A key for an event sent without one.

    Only content that includes the client's own timestamp proves that two requests carry
    the same occurrence, so only then is the key a hash of the content (an identical retry
    collapses); without a timestamp every event gets a fresh random key. sent_at is left
    out on purpose: a retry is sent later than the first attempt. Properties enter in one
    canonical form (keys sorted), so a retry that orders them differently still matches.
    """
    if event.timestamp is None:
        return f"rnd:{uuid.uuid4().hex}"
    stamp = event.timestamp.astimezone(UTC).isoformat()
    canonical = None
    if properties is not None:
        canonical = _encoder.encode(_values.decode(properties)).decode()
    content = _encoder.encode(
        [event.event_name, event.user_id, event.channel or "", stamp, canonical]
    )
    return f"sha:{hashlib.sha256(content).hexdigest()[:40]}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


_EDGE_YEARS = (1, 9999)


def _fits_utc(value: datetime) -> bool:
    # 0001-01-01T00:00:00+01:00 is a valid RFC 3339 time that datetime cannot hold in UTC.
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _describe(message: str) -> str:
    # msgspec: "Expected `str` of length <= 200 - at `$.user_id`" -> "user_id: Expected ..."
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{path.rstrip('`')}: {head}"
