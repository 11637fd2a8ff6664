"""A batch whose body passed the checks is mapped in one decode (segment_batch and
posthog_batch read Typed structs); every message must come out exactly as the
message-by-message mapping makes it: the same row, the same stored properties, the same
refusal in the same words."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_metrics import posthog, posthog_batch, sdk, segment, segment_batch
from event_metrics.events import InvalidEvent
from event_metrics.schema import Row

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
LIMITS = {"max_event_bytes": 65536, "max_depth": 32}
# The request's key is "emw_other": a message that carries it goes to the request's project.
DESTINATION = sdk.Destination(1, "emw_other", NOW, timedelta(days=1))
FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "sdk").glob("*.json"))
ABSENT = object()


def outcome(mapped: Row | sdk.Message | InvalidEvent) -> Any:
    """What a message becomes: its row (properties decoded: member order is not kept), in
    project 2 when it carries a key of its own other than the request's; or the refusal."""
    try:
        if isinstance(mapped, InvalidEvent):
            raise mapped
        row = mapped
        if isinstance(mapped, sdk.Message):
            own = mapped.project_key
            project = 2 if own is not None and own != DESTINATION.key else 1
            row = sdk.to_row_from(mapped, project_id=project, received_at=NOW,
                                  max_future=DESTINATION.max_future)  # fmt: skip
    except InvalidEvent as exc:
        return ("refused", str(exc), exc.reason)
    stored = None if row.properties is None else json.loads(row.properties)
    key = "rnd:" if row.idempotency_key.startswith("rnd:") else row.idempotency_key  # random
    return msgspec.structs.replace(row, properties=stored, idempotency_key=key)


def one_by_one(mapper: Any, raws: list[msgspec.Raw], **kwargs: Any) -> list[Any]:
    results = []
    for raw in raws:
        try:
            results.append(outcome(mapper(raw, **kwargs)))
        except InvalidEvent as exc:
            results.append(outcome(exc))
    return results


def segment_outcomes(text: bytes, path: str, *, each: bool = True) -> tuple[list[Any], ...]:
    """The outcomes of the whole-batch mapping, and (`each`) of the one-by-one one."""
    request = segment.parse(text, path)
    request.decoded = sdk.checked_body(text, max_depth=33 + request.nesting)
    whole = [outcome(m) for m in segment_batch.rows(request, DESTINATION, **LIMITS)]
    if not each:
        return (whole,)
    return whole, one_by_one(segment.message, request.messages, request=request, **LIMITS)


def posthog_outcomes(
    text: bytes, query: dict[str, str], *, each: bool = True
) -> tuple[list[Any], ...]:
    request = posthog.parse(text, query)
    request.decoded = sdk.checked_body(text, max_depth=33 + request.nesting)
    whole = [outcome(m) for m in posthog_batch.rows(request, DESTINATION, **LIMITS)]
    if not each:
        return (whole,)
    by_one = one_by_one(posthog.message, request.events, request=request, received_at=NOW,
                        **LIMITS)  # fmt: skip
    return whole, by_one


def fields(pools: dict[str, list[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any of the fields, each absent or one of its values."""
    return st.fixed_dictionaries(
        {name: st.sampled_from([ABSENT, *values]) for name, values in pools.items()}
    ).map(lambda drawn: {k: v for k, v in drawn.items() if v is not ABSENT})


TIMES = ["2026-11-29T11:59:00.000Z", "2026-11-29T11:59:00+00:00", "2026-01-01T00:00:00",
         "soon", "", None, 5, "9999-12-31T23:59:59-01:00", "2030-01-01T00:00:00Z"]  # fmt: skip
IDS = ["u1", "", None, 42, 1.5, True, ["a"], {"a": 1}, "x" * 201]
OWN = [None, {}, {"a": 1.5, "b": [1, 2]}, {"$segment": 1, "$$segment": 2}, {"$set": 1},
       {"$posthog": {"x": 1}, "$set_once": 3}, [1], "text", 7]  # fmt: skip
SEGMENT = {
    "type": ["track", "page", "identify", "group", "alias", "screen", "nope", None, "", 1],
    "event": ["Signed Up", "", None, 7, "x" * 201],
    "userId": IDS,
    "anonymousId": ["anon", None, "", 7, 2.5],
    "messageId": ["m-1", "", None, 5, "y" * 201],
    "timestamp": TIMES,
    "originalTimestamp": TIMES,
    "sentAt": TIMES,
    "writeKey": ["emw_other", "emw_mine", None, 5],
    "channel": ["server", "", None, 5],
    "context": [{"library": {"name": "lib", "version": "1"}}, {"channel": "mobile"},
                {"library": "x"}, "text", None, {"ip": "1.2.3.4", "n": 1.5}],
    "properties": OWN,
    "integrations": [{}, {"All": True}],
    "traits": [{"email": "a@b.c"}, None],
    "name": ["Home"],
    "_metadata": [{"bundled": ["x"]}],
    "extra": [1],  # a field no SDK sends: the whole-batch mapping leaves it to `message`
}  # fmt: skip
POSTHOG = {
    "event": ["$pageview", "", None, 7],
    "distinct_id": IDS,
    "uuid": ["0190-a", "", None, 5, "z" * 201],
    "timestamp": TIMES,
    "offset": [1500, 2.5, "x", None, True],
    "api_key": ["emw_other", "emw_api", None],
    "token": ["emw_token", "emw_other", 5],
    "sent_at": ["2026-11-29T12:00:00Z"],
    "properties": [*OWN, {"$lib": "web", "distinct_id": "d1", "token": "emw_t", "x": 1},
                   {"token": "emw_other"}, {"token": 5, "$lib": 7}, {"distinct_id": 1.5},
                   {"k": "token", "token": "emw_t"}, {"n": {"token": "emw_t"}, "token": "emw_t"}],
    "$set": [{"email": "a@b.c"}, None],
    "$set_once": [{"first": 1}],
    "channel": ["web", None, ""],
    "type": ["capture"],
    "library": ["posthog-python"],
    "options": [{"o": 1}],  # not one of Typed's fields
}  # fmt: skip


def written(value: Any, spaced: bool, escaped: bool) -> str:
    text = json.dumps(value) if spaced else json.dumps(value, separators=(",", ":"))
    if escaped:  # the same names once decoded: "$segment" written "\u0024segment"
        text = text.replace('"$', '"\\u0024')
    return text


@settings(deadline=None)
@given(
    batch=st.lists(fields(SEGMENT), min_size=1, max_size=4),
    envelope=fields({"sentAt": TIMES, "writeKey": ["emw_envelope", 5]}),
    shape=st.sampled_from(["batch", "array", "single"]),
    spaced=st.booleans(),
    escaped=st.booleans(),
)
def test_segment_batches_map_as_message_by_message(
    batch: list[dict[str, Any]], envelope: dict[str, Any], shape: str, spaced: bool,
    escaped: bool,
) -> None:  # fmt: skip
    body: Any = {"batch": batch, **envelope}
    path = "/v1/batch"
    if shape == "array":
        body = batch
    elif shape == "single":
        body, path = {**batch[0], **envelope}, "/v1/t"
    whole, each = segment_outcomes(written(body, spaced, escaped).encode(), path)
    assert whole == each


@settings(deadline=None)
@given(
    batch=st.lists(fields(POSTHOG), min_size=1, max_size=4),
    envelope=fields({"api_key": ["emw_envelope"], "sent_at": TIMES}),
    shape=st.sampled_from(["batch", "array", "single"]),
    spaced=st.booleans(),
    escaped=st.booleans(),
)
def test_posthog_batches_map_as_event_by_event(
    batch: list[dict[str, Any]], envelope: dict[str, Any], shape: str, spaced: bool,
    escaped: bool,
) -> None:  # fmt: skip
    body: Any = {"batch": batch, **envelope}
    if shape == "array":
        body = batch
    elif shape == "single":
        body = {**batch[0], **envelope}
    whole, each = posthog_outcomes(written(body, spaced, escaped).encode(), {"_": "1795984866110"})
    assert whole == each


# Numbers with a fraction are decoded as 0.0 by the checks the whole-batch mapping reads
# values from: each such field, where it decides something, and the other tricky cases.
SEGMENT_CASES = [
    {"type": 1.5, "event": "e", "userId": "u"},
    {"type": "track", "event": "e", "userId": "u", "channel": 2.5,
     "context": {"library": {"name": "lib"}}},
    {"type": "track", "event": "e", "userId": "u", "context": {"channel": 1.5,
     "library": {"name": "lib"}}},
    {"type": "track", "event": "e", "userId": "u", "context": {"library": {"name": 2.5}}},
    {"type": "track", "event": "e", "anonymousId": 2.5},
    {"type": "track", "event": "e", "userId": "u", "anonymousId": 2.5},
    {"type": "track", "event": "e", "userId": "u", "originalTimestamp": 1.5},
    {"type": "track", "event": "e", "userId": 1.5, "messageId": 2.5},
    {"type": "track", "event": "e", "userId": "u", "properties": {"$segment": 1.5}},
    {"type": "track", "event": "e", "userId": "u", "properties": {"a": 1.10, "b": 2e5}},
]  # fmt: skip
POSTHOG_CASES = [
    {"event": "e", "properties": {"distinct_id": 1.5}},
    {"event": "e", "distinct_id": "d", "properties": {"$lib": 2.5}},
    {"event": "e", "distinct_id": "d", "channel": 2.5, "properties": {"$lib": "web"}},
    {"event": "e", "distinct_id": "d", "properties": {"token": 1.5, "x": 1.10}},
    {"event": "e", "distinct_id": "d", "offset": 1.5},
    {"event": "e", "distinct_id": "d", "timestamp": 1.5, "offset": 100},
]


@pytest.mark.parametrize("message", SEGMENT_CASES)
def test_segment_messages_with_fractions_map_as_one_by_one(message: dict[str, Any]) -> None:
    for body, path in ((json.dumps({"batch": [message]}), "/v1/batch"),
                       (json.dumps(message), "/v1/track")):  # fmt: skip
        whole, each = segment_outcomes(body.encode(), path)
        assert whole == each


@pytest.mark.parametrize("event", POSTHOG_CASES)
def test_posthog_events_with_fractions_map_as_one_by_one(event: dict[str, Any]) -> None:
    for body in (json.dumps({"batch": [event]}), json.dumps(event)):
        whole, each = posthog_outcomes(body.encode(), {})
        assert whole == each


def recorded_text(path: Path) -> tuple[dict[str, Any], bytes]:
    recorded: dict[str, Any] = json.loads(path.read_text())
    text = asyncio.run(
        sdk.json_body(
            base64.b64decode(recorded["body_b64"]),
            content_type=recorded["headers"].get("Content-Type"),
            max_bytes=5_000_000,
        )
    )
    return recorded, text


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_what_the_sdks_send_is_mapped_whole_and_as_one_by_one(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded, text = recorded_text(path)
    if recorded["path"].startswith("/v1/"):
        expected = segment_outcomes(text, recorded["path"])[1]
        monkeypatch.setattr(segment, "message", _not_called)
        assert segment_outcomes(text, recorded["path"], each=False)[0] == expected
    else:
        query = dict(urllib.parse.parse_qsl(recorded["query"]))
        expected = posthog_outcomes(text, query)[1]
        carried = recorded["decoded_json"]
        events = carried if isinstance(carried, list) else carried.get("batch", [carried])
        if not any("offset" in event for event in events):  # older posthog-js: `message`
            monkeypatch.setattr(posthog, "message", _not_called)
        assert posthog_outcomes(text, query, each=False)[0] == expected


def _not_called(*_: Any, **__: Any) -> Any:
    raise AssertionError("a recorded SDK message left the whole-batch mapping")
