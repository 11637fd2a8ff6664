"""Request bodies: shapes, gzip members and bombs, limits on the wire and after gunzip."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import pytest

from event_metrics.payload import (
    BodyHeaders,
    MalformedPayload,
    PayloadTooLarge,
    body_headers,
    read_body,
    read_request_body,
    split_events,
)


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def event(key: str) -> dict[str, str]:
    return {"event_name": "e", "user_id": "u", "idempotency_key": key}


@pytest.mark.parametrize(
    "body",
    [
        json.dumps([event("a"), event("b")]),
        json.dumps({"events": [event("a"), event("b")]}),
    ],
)
def test_json_batches_split_into_events(body: str) -> None:
    items = split_events(body.encode(), kind="application/json", max_events=10)
    assert [json.loads(item)["idempotency_key"] for item in items] == ["a", "b"]


def test_one_object_with_other_keys_is_one_event() -> None:
    body = json.dumps({"events": [], "event_name": "e"}).encode()
    assert split_events(body, kind="application/json", max_events=10) == [body]


def test_ndjson_lines_are_events_and_blank_lines_skipped() -> None:
    body = b'{"a":1}\n\n  \n{"b":2}\n'
    assert split_events(body, kind="application/x-ndjson", max_events=10) == [
        b'{"a":1}', b'{"b":2}'
    ]  # fmt: skip


async def test_gzip_members_are_all_read() -> None:
    body = gzip.compress(b"[1,") + gzip.compress(b"2]")
    assert await read_body(chunks(body), encoding="gzip", max_bytes=100) == b"[1,2]"


async def test_limits_hold_on_the_wire_and_after_gunzip() -> None:
    bomb = gzip.compress(b" " * 10_000)
    with pytest.raises(PayloadTooLarge, match="decompressed"):
        await read_body(chunks(bomb, 50), encoding="gzip", max_bytes=1_000)
    padding = gzip.compress(b"") * 100  # 2 KB of empty members: nothing after gunzip
    with pytest.raises(PayloadTooLarge):
        await read_body(chunks(padding, 50), encoding="gzip", max_bytes=1_000)


async def test_truncated_gzip_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="truncated"):
        await read_body(chunks(gzip.compress(b"[1]")[:-4]), encoding="gzip", max_bytes=100)


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def never() -> dict[str, object]:
        raise AssertionError("the body was read")

    headers = BodyHeaders("application/json", None, 10**12)
    with pytest.raises(PayloadTooLarge, match="Content-Length"):
        await read_request_body(never, headers, max_bytes=1000)  # type: ignore[arg-type]


def test_body_headers_take_the_first_of_each() -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", b"12"),
           (b"content-type", b"text/plain"), (b"content-length", b"x")]  # fmt: skip
    assert body_headers(raw) == BodyHeaders("application/json", None, 12)
