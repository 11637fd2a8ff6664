"""What JSON we accept and store as it was sent: valid UTF-8, no duplicate keys, bounded
depth, no NUL, and numbers PostgreSQL's jsonb can hold.

Properties are stored as the client's own JSON text, so their digits survive (a float
round trip turns 12345678901234567890.5 into 12345678901234567000). jsonb keeps the last
of two equal keys and refuses NUL, lone surrogates and numbers beyond numeric's range;
an event holding any of those is refused here, on its own, instead of failing its batch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

# PostgreSQL numeric: at most 131072 digits before the decimal point, 16383 after.
_MAX_WHOLE_DIGITS = 131_072
_MAX_FRACTION_DIGITS = 16_383


class InvalidJSON(ValueError):
    """The JSON is not something we store; the message says why."""


def _check_float(text: str) -> int:
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - msgspec only passes valid literals
        raise InvalidJSON(f"number {text[:40]} is not valid") from None
    exponent = number.as_tuple().exponent
    if (
        not isinstance(exponent, int)
        or number.adjusted() >= _MAX_WHOLE_DIGITS
        or -exponent > _MAX_FRACTION_DIGITS
    ):
        raise InvalidJSON(f"number {text[:40]} is out of range")
    return 0  # the value itself is not needed: the text is what gets stored


_any = msgspec.json.Decoder(float_hook=_check_float)
_encode = msgspec.json.Encoder().encode


def decode(raw: bytes | memoryview, *, max_depth: int) -> Any:
    """Decode JSON that must follow the rules above; raise InvalidJSON saying why not.

    Floats come back as 0: callers keep the raw text, the decoded value is for checking.
    """
    data = bytes(raw)
    try:
        value = _any.decode(data)
    except UnicodeDecodeError:
        raise InvalidJSON("not valid UTF-8") from None
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {max_depth} levels") from None
    except msgspec.ValidationError as exc:  # raised by _check_float
        raise InvalidJSON(str(exc).split(" - at `")[0]) from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise InvalidJSON(f"not valid JSON: {exc}") from None
    if b"\\" not in data:
        if _nests_deeper(data, max_depth):
            raise InvalidJSON(f"nested deeper than {max_depth} levels")
        if _dropped_a_key(data, value):
            refuse_duplicate_keys(data)
    else:
        _walk_escaped(value, max_depth)
        refuse_duplicate_keys(data)
    return value


def all_objects(texts: Sequence[bytes], *, max_depth: int) -> bool:
    """Whether decode() would accept every text and find an object in each, checked as
    one JSON array: one decode and one encode for a whole batch instead of one per event.
    False says nothing about which text fails: ask decode() about each."""
    data = b"[" + b",".join(texts) + b"]"
    if b"\\" in data:
        return False
    try:
        value = _any.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return False
    # Each text holds one value, so the array holds one per text unless one is not JSON.
    if len(value) != len(texts) or any(type(item) is not dict for item in value):
        return False
    # The array adds one level. Decoding can only drop a key, so the array drops none
    # only if no text does.
    return not _nests_deeper(data, max_depth + 1) and not _dropped_a_key(data, value)


def _nests_deeper(data: bytes, max_depth: int) -> bool:
    """Whether JSON text without escapes nests deeper than max_depth."""
    return data.count(b"{") + data.count(b"[") > max_depth and _deeper(data, max_depth)


def _dropped_a_key(data: bytes, value: Any) -> bool:
    """Whether decoding JSON text without escapes dropped a repeated key.

    Without escapes every ':' in the text separates a key from its value or sits inside a
    string exactly as decoded, and encoding the decoded value writes the same strings
    back. Fewer ':' in that encoding means two keys of one object were equal and decoding
    kept one.
    """
    return data.count(b":") != _encode(value).count(b":")


_STRING = re.compile(rb'"[^"]*"')  # a string, in JSON text without escapes
_BRACKETS = bytes.maketrans(b"[]", b"{}")  # for depth, arrays count like objects
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'{}[]"')))


def _deeper(data: bytes, max_depth: int) -> bool:
    """Whether valid JSON text without escapes nests deeper than max_depth.

    Its brackets, once strings are gone, lose their innermost level per pass of
    replace("{}", ""), so it takes one pass per level. Dropping '""' first removes empty
    strings, or joins two strings with nothing but text between them: either way the
    quotes left still pair up around what was inside strings.
    """
    brackets = data.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets:
        brackets = _STRING.sub(b"", brackets)
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"{}", b"")
    return bool(brackets)


def _walk_escaped(value: Any, max_depth: int, depth: int = 1) -> None:
    """Depth, and NUL in any key or string (only an escape can put one there)."""
    kind = type(value)
    if kind in (dict, list) and depth > max_depth:
        raise InvalidJSON(f"nested deeper than {max_depth} levels")
    if kind is str:
        if "\x00" in value:
            raise InvalidJSON("strings must not contain NUL (\\u0000)")
    elif kind is dict:
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidJSON("keys must not contain NUL (\\u0000)")
            _walk_escaped(item, max_depth, depth + 1)
    elif kind is list:
        for item in value:
            _walk_escaped(item, max_depth, depth + 1)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidJSON(f"key {key[:60]!r} appears twice in one object")
        seen.add(key)


def refuse_duplicate_keys(data: bytes) -> None:
    """The exact check, object by object (the slower path: escapes, or a count mismatch)."""
    try:
        json.loads(data, object_pairs_hook=_refuse_duplicates, parse_float=len, parse_int=len)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJSON(f"not valid JSON: {exc}") from None


def top_level_keys(data: bytes) -> list[str]:
    """The keys of a JSON object in order, repeats included (objects become pair lists,
    and the outermost one is built last)."""
    try:
        pairs = json.loads(data, object_pairs_hook=list, parse_float=len, parse_int=len)
    except RecursionError:
        raise InvalidJSON("nested too deeply") from None
    except ValueError as exc:
        raise InvalidJSON(f"not valid JSON: {exc}") from None
    if not isinstance(pairs, list):
        raise InvalidJSON("not a JSON object")
    return [key for key, _ in pairs]


_NAME = re.compile(rb'[ \t\n\r]*"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*')
_AFTER_VALUE = re.compile(rb"[ \t\n\r]*([,}])")
_decode_name = msgspec.json.Decoder(str)


def repeats_a_key(text: bytes, members: Mapping[str, msgspec.Raw]) -> bool:
    """Whether the JSON object `text` names a member twice once names are decoded
    (`{"batch": [A], "\\u0062atch": [B]}`): `members` is what a decoder that keeps the last
    of repeated names made of it.

    The outer members are walked without parsing their values: each name is read and
    decoded, and its value must be the text `members` holds for that name, or a later
    member of the same name replaced it. So the cost is a comparison per member, however
    large the values; anything unexpected falls back to the exact, slower check.
    """
    start = text.find(b"{") + 1
    seen: set[str] = set()
    position = start
    while True:
        name = _NAME.match(text, position)
        if name is None:
            break
        raw = name.group(1)
        try:
            key = raw.decode() if b"\\" not in raw else _decode_name.decode(b'"' + raw + b'"')
        except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            break
        value = members.get(key)
        if key in seen or value is None or not text.startswith(value, name.end()):
            return True  # an earlier member of a name that comes again
        seen.add(key)
        after = _AFTER_VALUE.match(text, name.end() + len(value))
        if after is None:
            break
        if after.group(1) == b"}":
            return False
        position = after.end()
    if position == start and text[start:].strip(b" \t\n\r") == b"}":
        return False  # {}
    names = top_level_keys(text)
    return len(names) != len(set(names))
