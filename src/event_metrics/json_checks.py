"""What JSON we accept and store with its values as sent: valid UTF-8, no duplicate keys,
bounded depth, no NUL, and numbers PostgreSQL's jsonb can hold without growing much.

Properties are stored from the client's own JSON text, so their digits survive (a float
round trip turns 12345678901234567890.5 into 12345678901234567000). jsonb keeps the last
of two equal keys and refuses NUL, lone surrogates and numbers beyond numeric's range;
an event holding any of those is refused here, on its own, instead of failing its batch.
jsonb also writes a number in exponent form out in full (1e5 is stored as 100000, 1e400 as
401 digits): such a number may have at most `max_digits` digits written out, and the text
written out at most `max_bytes`, so that what is stored, and copied to ClickHouse, stays
as bounded as what was sent.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

# PostgreSQL numeric: at most 131072 digits before the decimal point, 16383 after.
_MAX_WHOLE_DIGITS = 131_072
_MAX_FRACTION_DIGITS = 16_383
# The default of EVENT_METRICS_MAX_NUMBER_DIGITS: every IEEE double written out has fewer
# (the longest, 4.9406564584124654e-324, has 341).
MAX_NUMBER_DIGITS = 400


class InvalidJSON(ValueError):
    """The JSON is not something we store; the message says why."""


class TooLargeWrittenOut(InvalidJSON):
    """The text, with its numbers written out as PostgreSQL stores them, is too large."""


def written_out(number: Decimal) -> tuple[int, int]:
    """(digits, characters) of a finite number as PostgreSQL's numeric writes it: the
    exponent written out, the scale kept (1.0e2 -> 100, 2.5E-3 -> 0.0025, 100e-2 -> 1.00,
    -0.0 -> 0.0), without building the text (1e131071 has 131,072 digits)."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    nonzero = any(digits)
    if exponent >= 0:
        count = len(digits) + exponent if nonzero else 1
        return count, count + (sign and nonzero)
    whole = max(1, len(digits) + exponent) if nonzero else 1
    count = whole - exponent
    return count, count + 1 + (sign and nonzero)


_sizes = threading.local()  # the growth of the text being decoded, per thread


@functools.lru_cache(maxsize=8)
def _decoder(max_digits: int) -> msgspec.json.Decoder[Any]:
    def check(text: str) -> float:
        if len(text) <= _MAX_FRACTION_DIGITS and "e" not in text and "E" not in text:
            return 0.0  # a plain decimal this short is within numeric's range, stored as sent
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
        if "e" in text or "E" in text:  # the only form jsonb does not keep as sent
            digits, length = written_out(number)
            if digits > max_digits:
                raise InvalidJSON(
                    f"number {text[:40]} has {digits} digits written out, as PostgreSQL"
                    f" stores it; the limit is {max_digits}"
                )
            _sizes.growth += length - len(text)
        # The value itself is not needed: the text is what gets stored. A float still, so
        # that a reader of the decoded value can tell it from an integer.
        return 0.0

    hook: Callable[[str], float] = check
    return msgspec.json.Decoder(float_hook=hook)


_encode = msgspec.json.Encoder().encode


def _decode_sized(data: bytes, max_digits: int) -> tuple[Any, int]:
    """The value, and how many bytes the text grows when its numbers are written out."""
    _sizes.growth = 0
    value = _decoder(max_digits).decode(data)
    return value, _sizes.growth


def decode(
    raw: bytes | memoryview,
    *,
    max_depth: int,
    max_digits: int = MAX_NUMBER_DIGITS,
    max_bytes: int | None = None,
    many: bool = False,
) -> Any:
    """Decode JSON that must follow the rules above; raise InvalidJSON saying why not
    (TooLargeWrittenOut when, with its numbers written out, it is over max_bytes).

    Floats come back as 0.0: callers keep the raw text, the decoded value is for checking.
    `many`: the text holds many objects (an SDK batch), so its brackets are not counted
    before its depth is measured (the count only spares small texts the measurement).
    """
    data = bytes(raw)
    try:
        value, growth = _decode_sized(data, max_digits)
    except UnicodeDecodeError:
        raise InvalidJSON("not valid UTF-8") from None
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {max_depth} levels") from None
    except msgspec.ValidationError as exc:  # raised by _check_float
        raise InvalidJSON(str(exc).split(" - at `")[0]) from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise InvalidJSON(f"not valid JSON: {exc}") from None
    if b"\\" not in data:
        if _deeper(data, max_depth) if many else _nests_deeper(data, max_depth):
            raise InvalidJSON(f"nested deeper than {max_depth} levels")
        if _dropped_a_key(data, value):
            refuse_duplicate_keys(data)
    else:
        _walk_escaped(value, max_depth)
        refuse_duplicate_keys(data)
    if max_bytes is not None and growth > 0 and len(data) + growth > max_bytes:
        raise TooLargeWrittenOut(
            f"{len(data) + growth} bytes with the numbers written out, as PostgreSQL stores"
            f" them (1e5 is 100000); the limit is {max_bytes}"
        )
    return value


def all_objects(
    texts: Sequence[bytes], *, max_depth: int, max_digits: int = MAX_NUMBER_DIGITS
) -> bool:
    """Whether decode() would accept every text and find an object in each, checked as
    one JSON array: one decode and one encode for a whole batch instead of one per event.
    False says nothing about which text fails: ask decode() about each. (A batch with a
    number in exponent form that grows written out is sent to decode() too, which knows
    each text's bound.)"""
    data = b"[" + b",".join(texts) + b"]"
    if b"\\" in data:
        return False
    try:
        value, growth = _decode_sized(data, max_digits)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return False
    if growth > 0:
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
