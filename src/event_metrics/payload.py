"""Request bodies for POST /events: content types, gzip, and splitting into raw events."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple

import msgspec
from litestar.types import Receive

from event_metrics import inflate, json_checks

# The errors keep their old home for importers (`as`: an explicit re-export).
from event_metrics.body_errors import ClientDisconnected as ClientDisconnected
from event_metrics.body_errors import MalformedPayload as MalformedPayload
from event_metrics.body_errors import PayloadTooLarge as PayloadTooLarge
from event_metrics.body_errors import TooManyEvents as TooManyEvents
from event_metrics.body_errors import UnsupportedMediaType as UnsupportedMediaType

JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, or raise UnsupportedMediaType."""
    kind = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {kind!r} is not supported; send application/json or application/x-ndjson"
        )
    return kind


class BodyHeaders(NamedTuple):
    content_type: str | None
    content_encoding: str | None
    content_length: int | None


def body_headers(raw: Iterable[tuple[bytes, bytes]]) -> BodyHeaders:
    """Content-Type, -Encoding and -Length (the first of each) from the ASGI header list.

    Read from the scope directly: request.headers builds a multidict per request, which
    costs more than parsing a one-event body.
    """
    content_type = content_encoding = length = None
    for name, value in raw:  # ASGI servers lower-case header names
        if name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"content-encoding" and content_encoding is None:
            content_encoding = value.decode("latin-1")
        elif name == b"content-length" and length is None and value.isdigit():
            length = int(value)
    return BodyHeaders(content_type, content_encoding, length)


async def read_request_body(receive: Receive, headers: BodyHeaders, *, max_bytes: int) -> bytes:
    """The whole (gunzipped) body, with every limit enforced before the work is done.

    A declared Content-Length over the limit is refused before the first read, so a
    client sending `Expect: 100-continue` never gets its `100 Continue`; the bytes on the
    wire and the bytes after gunzip are each bounded by max_bytes. (The time the body may
    take is the HTTP protocol's to enforce: http_server.py.)
    """
    if headers.content_length is not None and headers.content_length > max_bytes:
        raise PayloadTooLarge(
            f"Content-Length {headers.content_length} is over the limit of {max_bytes} bytes"
        )
    return await read_body(
        _body_chunks(receive), encoding=headers.content_encoding, max_bytes=max_bytes
    )


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnected("the client disconnected before sending its whole body")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_body(chunks: AsyncIterator[bytes], *, encoding: str | None, max_bytes: int) -> bytes:
    """Read the body, gunzipping if asked; at most max_bytes on the wire and after gunzip."""
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip")
    stream = inflate.Gunzip(max_bytes) if encoding != "identity" else None
    parts: list[bytes] = []
    wire = 0
    async for chunk in chunks:
        # Without this, one gzip member of empty deflate blocks was read for gigabytes.
        wire += len(chunk)
        if wire > max_bytes:
            raise PayloadTooLarge(f"body is over {max_bytes} bytes")
        if stream is not None:
            await inflate.feed(stream, chunk)  # bounded, and in steps (inflate.py)
        else:
            parts.append(chunk)
    return stream.result() if stream is not None else b"".join(parts)


def split_events(body: bytes, *, kind: str, max_events: int) -> list[bytes]:
    """Split a body into the raw JSON of each event, without validating the events.

    A JSON body must be valid as a whole (UTF-8, one unambiguous envelope) or nothing in
    it is taken; NDJSON lines are events of their own, each accepted or rejected alone.
    """
    if kind in NDJSON_TYPES:
        items = [line for line in body.splitlines() if line.strip()]
        for number, line in enumerate(items, start=1):
            first = line.lstrip()[:1]
            if first != b"{":
                raise MalformedPayload(f"line {number} is not a JSON object")
    else:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPayload(f"body is not valid UTF-8 (byte {exc.start})") from None
        items = _split_json(body)
    if not items:
        raise MalformedPayload("the body holds no events")
    if len(items) > max_events:
        raise TooManyEvents(f"{len(items)} events in one request; the limit is {max_events}")
    return items


def _split_json(body: bytes) -> list[bytes]:
    items: list[bytes] | list[msgspec.Raw]
    first = body.lstrip()[:1]
    try:
        if first == b"[":
            items = _raw_list.decode(body)
        elif first == b"{":
            fields = _raw_object.decode(body)
            wrapped = fields.get("events")
            if wrapped is not None and len(fields) == 1:
                # {"events": [A], "\u0065vents": [B]} decodes as B alone: ambiguous.
                if json_checks.repeats_a_key(body, fields):
                    raise MalformedPayload('body is ambiguous: "events" appears twice')
                # msgspec.Raw is a buffer, not bytes: it has no lstrip().
                inner = bytes(wrapped)
                if inner.lstrip()[:1] != b"[":
                    raise MalformedPayload('"events" must be a list of events')
                items = _raw_list.decode(inner)
            else:
                return [body]
        else:
            raise MalformedPayload('body must be an event, a list of events or {"events": [...]}')
    except (msgspec.DecodeError, json_checks.InvalidJSON) as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # An event nested deeper than msgspec recurses is rejected on its own, later;
        # the others in the body must still be found.
        items = _split_deep_array(body)
    for index, item in enumerate(items):
        if bytes(item).lstrip()[:1] != b"{":
            raise MalformedPayload(f"item {index} is not a JSON object")
    return [bytes(item) for item in items]


# A string, or a run of one structural character: what the slow splitter steps over.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|\[+|\]+|\{+|\}+|,')
_ENVELOPE = re.compile(rb'\s*\{\s*"events"\s*:\s*(\[.*\])\s*\}\s*', re.DOTALL)


def _split_deep_array(body: bytes) -> list[bytes]:
    """The top-level items of a JSON array (or {"events": [...]}) without recursion.

    Only for bodies too deep for msgspec; it steps over strings and brackets in C-speed
    regex matches, so its cost stays proportional to the body, which is bounded.
    """
    envelope = _ENVELOPE.fullmatch(body)
    data = envelope.group(1) if envelope else body.strip()
    if data[:1] != b"[" or data[-1:] != b"]":
        raise MalformedPayload("body is nested too deeply to be an event or a list of events")
    items: list[bytes] = []
    stack: list[int] = []  # the open brackets, innermost last
    start = 1
    for match in _TOKEN.finditer(data):
        token = match.group()
        first = token[0]
        if first in b"[{":
            stack.extend(token)
        elif first in b"]}":
            opener = b"[" if first == ord("]") else b"{"
            if len(stack) < len(token) or bytes(stack[-len(token) :]) != opener * len(token):
                break
            del stack[-len(token) :]
            if not stack:  # the closing bracket of the array itself
                if match.end() != len(data):
                    break
                last = data[start : match.end() - 1].strip()
                if last:
                    items.append(last)
                return items
        elif first == ord(",") and len(stack) == 1:
            items.append(data[start : match.start()].strip())
            start = match.end()
    raise MalformedPayload("body is not valid JSON: unbalanced brackets")
