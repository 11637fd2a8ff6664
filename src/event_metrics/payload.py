"""Request bodies for POST /events: content types, gzip, and splitting into raw events."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import msgspec

JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


class PayloadTooLarge(Exception):
    """The body, before or after decompression, is over the configured limit."""


class UnsupportedMediaType(Exception):
    """The Content-Type or Content-Encoding is not one we read."""


class MalformedPayload(Exception):
    """The body is not JSON, or not an event, a list of events or {"events": [...]}."""


class TooManyEvents(Exception):
    """The request holds more events than one request may."""


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


async def read_body(chunks: AsyncIterator[bytes], *, encoding: str | None, max_bytes: int) -> bytes:
    """Read the body, gunzipping if asked, never holding more than max_bytes of either."""
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip")
    inflater = zlib.decompressobj(wbits=31) if encoding != "identity" else None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        pending = chunk
        while pending:
            if inflater is None:
                out, pending = pending, b""
            else:
                if inflater.eof:
                    # A gzip body may hold several members one after another (RFC 1952,
                    # `cat a.gz b.gz`); reading only the first would drop events silently.
                    inflater = zlib.decompressobj(wbits=31)
                try:
                    # max_length bounds the output, so a gzip bomb stops at the limit.
                    out = inflater.decompress(pending, max_bytes - size + 1)
                except zlib.error as exc:
                    raise MalformedPayload(f"body is not valid gzip: {exc}") from None
                if inflater.unconsumed_tail:
                    raise PayloadTooLarge(f"decompressed body is over {max_bytes} bytes")
                pending = inflater.unused_data if inflater.eof else b""
            size += len(out)
            if size > max_bytes:
                raise PayloadTooLarge(f"body is over {max_bytes} bytes")
            parts.append(out)
    if inflater is not None and not inflater.eof:
        raise MalformedPayload("body is truncated gzip")
    return b"".join(parts)


def split_events(body: bytes, *, kind: str, max_events: int) -> list[bytes]:
    """Split a body into the raw JSON of each event, without validating the events."""
    if kind in NDJSON_TYPES:
        items = [line for line in body.splitlines() if line.strip()]
        for number, line in enumerate(items, start=1):
            first = line.lstrip()[:1]
            if first != b"{":
                raise MalformedPayload(f"line {number} is not a JSON object")
    else:
        items = _split_json(body)
    if not items:
        raise MalformedPayload("the body holds no events")
    if len(items) > max_events:
        raise TooManyEvents(f"{len(items)} events in one request; the limit is {max_events}")
    return items


def _split_json(body: bytes) -> list[bytes]:
    first = body.lstrip()[:1]
    try:
        if first == b"[":
            items = _raw_list.decode(body)
        elif first == b"{":
            fields = _raw_object.decode(body)
            wrapped = fields.get("events")
            if wrapped is not None and len(fields) == 1:
                # msgspec.Raw is a buffer, not bytes: it has no lstrip().
                inner = bytes(wrapped)
                if inner.lstrip()[:1] != b"[":
                    raise MalformedPayload('"events" must be a list of events')
                items = _raw_list.decode(inner)
            else:
                return [body]
        else:
            raise MalformedPayload('body must be an event, a list of events or {"events": [...]}')
    except msgspec.DecodeError as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None
    for index, item in enumerate(items):
        if bytes(item).lstrip()[:1] != b"{":
            raise MalformedPayload(f"item {index} is not a JSON object")
    return [bytes(item) for item in items]
