"""Property-based fuzzing of the payload and event parsers: json_checks agrees with a
standard-library oracle, and arbitrary bodies raise nothing but client errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from event_metrics import json_checks
from event_metrics.events import InvalidEvent, parse_event
from event_metrics.payload import (
    JSON_TYPES,
    NDJSON_TYPES,
    MalformedPayload,
    TooManyEvents,
    split_events,
)
from strategies import MAX_DEPTH, NOW, bodies, oracle, render, trees


@settings(max_examples=400, deadline=None)
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


@settings(max_examples=400, deadline=None)
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
