"""Property-based fuzzing of the payload and event parsers: json_checks agrees with a
standard-library oracle, and arbitrary bodies raise nothing but client errors."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from event_metrics import events, json_checks
from event_metrics.events import InvalidEvent, parse_event, parse_events
from event_metrics.payload import (
    JSON_TYPES,
    NDJSON_TYPES,
    MalformedPayload,
    TooManyEvents,
    split_events,
)
from event_metrics.schema import Row
from strategies import MAX_DEPTH, NOW, bodies, event_bytes, oracle, render, trees


@given(tree=trees, escape=st.lists(st.booleans(), max_size=3), space=st.sampled_from(["", " "]))
def test_json_checks_agree_with_the_standard_library(
    tree: Any, escape: list[bool], space: str
) -> None:
    text = render(tree, escape, space).encode("utf-8", "surrogatepass")
    try:
        json_checks.decode(text, max_depth=MAX_DEPTH)
        accepted = True
    except json_checks.InvalidJSON:
        accepted = False
    assert accepted == oracle(text, MAX_DEPTH), text


@given(
    batch=st.lists(st.tuples(trees, st.lists(st.booleans(), max_size=3)), min_size=1, max_size=5),
    space=st.sampled_from(["", " "]),
)
def test_a_batch_of_properties_passes_only_if_each_would(
    batch: list[tuple[Any, list[bool]]], space: str
) -> None:
    """all_objects (one check for a whole batch) says yes only when decode() accepts each
    text and finds an object, and says yes to every batch of such texts without escapes:
    otherwise the fast path would be wrong, or never taken."""
    texts = [render(tree, escape, space).encode("utf-8", "surrogatepass") for tree, escape in batch]
    each = [
        oracle(text, MAX_DEPTH)
        and isinstance(msgspec.json.Decoder(float_hook=str).decode(text), dict)
        for text in texts
    ]
    together = json_checks.all_objects(texts, max_depth=MAX_DEPTH)
    if together:
        assert all(each), texts
    elif all(each):
        # The fast path declines escapes, and exponents that grow written out (each text
        # has its own bound then).
        assert any(b"\\" in text or re.search(rb"[0-9][eE]", text) for text in texts), texts


@given(
    batch=st.lists(st.tuples(trees, st.lists(st.booleans(), max_size=3)), min_size=2, max_size=5),
    noise=st.lists(event_bytes(), max_size=2),
)
def test_a_batch_parses_as_its_events_one_by_one(
    batch: list[tuple[Any, list[bool]]], noise: list[bytes]
) -> None:
    """parse_events over a request's events (with its batch check of the properties)
    gives each event the row, or the refusal and reason, that it gets on its own."""
    items = [
        b'{"event_name": "e", "user_id": "u", "properties": '
        + render(tree, escape, "").encode("utf-8", "surrogatepass")
        + b"}"
        for tree, escape in batch
    ] + noise
    assert_parsed_as_one_by_one(items)


def assert_parsed_as_one_by_one(items: list[bytes]) -> None:
    """parse_events over all the items gives each the row, or the refusal and reason,
    that it gets on its own (parse_event: no batch checks)."""
    options: dict[str, Any] = {"project_id": 1, "received_at": NOW, "max_event_bytes": 65536,
                               "max_future": timedelta(days=1), "max_depth": MAX_DEPTH}  # fmt: skip
    together = parse_events(items, **options)
    for item, outcome in zip(items, together, strict=True):
        try:
            alone: Row | InvalidEvent = parse_event(item, **options)
        except InvalidEvent as exc:
            alone = exc
        if isinstance(alone, InvalidEvent):
            assert isinstance(outcome, InvalidEvent), item
            assert (str(outcome), outcome.reason) == (str(alone), alone.reason), item
        else:
            assert isinstance(outcome, Row), item
            # An event without its own key or time gets a random key each time it is parsed.
            if alone.idempotency_key.startswith("rnd:"):
                assert outcome.idempotency_key.startswith("rnd:")
                outcome = msgspec.structs.replace(outcome, idempotency_key=alone.idempotency_key)
            assert outcome == alone, item


@given(body=bodies())
def test_parsers_raise_only_client_errors(body: tuple[bytes, str]) -> None:
    raw, kind = body
    assert kind in JSON_TYPES | NDJSON_TYPES
    try:
        items = split_events(raw, kind=kind, max_events=100)
    except (MalformedPayload, TooManyEvents):
        return
    for item in items:
        try:
            row = parse_event(
                item,
                project_id=1,
                received_at=NOW,
                max_event_bytes=65536,
                max_future=timedelta(days=1),
                max_depth=MAX_DEPTH,
            )
        except InvalidEvent:
            continue
        # What is accepted can be stored: text without NUL, JSON PostgreSQL takes.
        assert "\x00" not in row.event_name + row.user_id + row.idempotency_key + row.channel
        if row.properties is not None:
            assert isinstance(msgspec.json.decode(row.properties), dict)


# Events built member by member: a field may come twice, be sent as null, have its name
# written with a \u escape, have another field's name as its value, or hold a NUL.
_VALUES = {
    "event_name": ['"e"', '"channel"'],
    "user_id": ['"u"', '"sent_at"', '"a\\u0000b"'],
    "idempotency_key": ['"k"', "null"],
    "channel": ['"web"', "null"],
    "timestamp": ['"2026-11-01T00:00:00Z"', "null"],
    "sent_at": ['"2026-11-01T00:00:05Z"', "null"],
    "properties": ["{}", '{"user_id": 2}', "null"],
}
_members = st.sampled_from(sorted(_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(_VALUES[name]), st.booleans())
)


def _render_event(members: list[tuple[str, str, bool]]) -> bytes:
    def spelled(name: str, escaped: bool) -> str:
        return f"\\u{ord(name[0]):04x}{name[1:]}" if escaped else name

    return ("{" + ", ".join(f'"{spelled(n, e)}": {v}' for n, v, e in members) + "}").encode()


_events = st.lists(_members, max_size=5).map(
    lambda extra: [("event_name", '"e"', False), ("user_id", '"u"', False), *extra]
)


@given(batch=st.lists(_events, min_size=2, max_size=5))
def test_a_batch_with_repeated_fields_parses_as_its_events_one_by_one(
    batch: list[list[tuple[str, str, bool]]],
) -> None:
    """The repeated-field check done once for a whole request refuses exactly the events
    that repeat a field, whatever else the batch holds."""
    assert_parsed_as_one_by_one([_render_event(members) for members in batch])


@given(
    batch=st.lists(
        st.sets(st.sampled_from(sorted(set(_VALUES) - {"event_name", "user_id"}))),
        min_size=2, max_size=5,
    )
)  # fmt: skip
def test_a_batch_without_repeated_fields_is_checked_at_once(batch: list[set[str]]) -> None:
    """Plain events (each field once, no escapes, no nulls) skip the per-event check."""
    items = [
        _render_event([("event_name", '"e"', False), ("user_id", '"u"', False)]
                      + [(name, _VALUES[name][0], False) for name in sorted(fields)])
        for fields in batch
    ]  # fmt: skip
    decoded = [events._decode(item, 65536) for item in items]
    texts = [events._properties_text(event) for event in decoded]
    assert events._each_field_once(b",".join(items), decoded, texts), items
