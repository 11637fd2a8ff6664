"""Hypothesis strategies for the fuzzers: JSON text with the hard parts (duplicate keys,
escapes, lone surrogates, NUL, numbers out of range), events and request bodies, and gzip
bodies as sequences of members."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

MAX_DEPTH = 6

# --- JSON text with the hard parts: duplicate keys, escapes, surrogates, NUL, numbers ----

keys = st.sampled_from(["a", "b", "x:y", "é", "\x00", "k\\", 'q"', "{[", "]"])
numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.sampled_from(
        [
            "1e5",
            "-2.5E-3",
            "1e200000",
            "1e-20000",
            "12345678901234567890.5",
            "0",
            "1e399",
            "1e400",
            "-1E+131071",
            "1.5e-398",
            "1.5e-399",
            "0e99999",
            "1.0e2",
        ]
    ),
)
scalars = st.one_of(
    st.none().map(lambda _: "null"),
    st.booleans().map(lambda b: "true" if b else "false"),
    numbers,
    st.text(max_size=6).map(lambda t: ("s", t)),
    st.text("{}[]:a", max_size=6).map(lambda t: ("s", t)),  # brackets inside strings
    st.sampled_from(['"\\ud800"', '"\\udc00"', '"\\ud83d\\ude00"', '"\\u0000"', '"C:\\\\u0000"']),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: ("list", items)),
        st.lists(st.tuples(keys, children), max_size=4).map(lambda pairs: ("object", pairs)),
    ),
    max_leaves=12,
)


def render_string(text: str, escape: list[bool]) -> str:
    out = []
    for n, char in enumerate(text):
        if char in '"\\' or ord(char) < 0x20 or (escape and escape[n % len(escape)]):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render(tree: Any, escape: list[bool], space: str) -> str:
    if isinstance(tree, str):
        return tree
    kind, value = tree
    if kind == "s":
        return render_string(value, escape)
    if kind == "list":
        return "[" + f",{space}".join(render(item, escape, space) for item in value) + "]"
    members = (f"{render_string(k, escape)}:{space}{render(v, escape, space)}" for k, v in value)
    return "{" + f",{space}".join(members) + "}"


def oracle(text: bytes, max_depth: int) -> bool:
    """Whether the JSON should be accepted, decided with the standard library only."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if len(set(names)) != len(names):
            raise ValueError("duplicate")
        return dict(items)

    def number(literal: str) -> Decimal:
        value = Decimal(literal)
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        if value.adjusted() >= 131072 or -exponent > 16383:
            raise ValueError("range")
        # Exponent forms are stored written out: at most MAX_NUMBER_DIGITS digits then.
        if "e" in literal.lower() and sum(c.isdigit() for c in format(value, "f")) > 400:
            raise ValueError("digits")
        return value

    def depth_and_strings(value: Any, depth: int = 1) -> None:
        if not isinstance(value, (dict, list)):
            return
        if depth > max_depth:
            raise ValueError("depth")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            for string in (key, item):
                if isinstance(string, str):
                    string.encode("utf-8")  # lone surrogates fail here
                    if "\x00" in string:
                        raise ValueError("nul")
            depth_and_strings(item, depth + 1)

    try:
        value = json.loads(text.decode("utf-8"), object_pairs_hook=pairs, parse_float=number)
        if isinstance(value, str):
            value.encode("utf-8")
            if "\x00" in value:
                return False
        depth_and_strings(value)
    except (ValueError, UnicodeError, RecursionError):
        return False
    return True


NOW = datetime(2026, 11, 29, tzinfo=UTC)
fields = st.fixed_dictionaries(
    {"event_name": st.sampled_from(["e", "", "x" * 201])},
    optional={
        "user_id": st.one_of(st.text(max_size=5), st.integers()),
        "timestamp": st.sampled_from(
            ["2026-11-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
             "1969-12-31T23:59:59Z", "nope", 5]
        ),
        "sent_at": st.sampled_from(["2026-11-01T00:00:00Z", "0001-01-01T00:00:00+14:00"]),
        "idempotency_key": st.text(max_size=4),
        "channel": st.one_of(st.none(), st.text(max_size=3)),
        "unknown": st.integers(),
    },
)  # fmt: skip


def event_bytes() -> st.SearchStrategy[bytes]:
    plain = fields.map(lambda f: json.dumps(f).encode())
    with_properties = st.tuples(fields, trees, st.lists(st.booleans(), max_size=2)).map(
        lambda t: (
            json.dumps(t[0])[:-1].encode()
            + b', "properties": '
            + render(t[1], t[2], "").encode("utf-8", "surrogatepass")
            + b"}"
        )
    )
    return st.one_of(plain, with_properties, st.binary(max_size=40))


def bodies() -> st.SearchStrategy[tuple[bytes, str]]:
    events = st.lists(event_bytes(), max_size=5)
    as_json = events.map(lambda items: (b"[" + b",".join(items) + b"]", "application/json"))
    wrapped = events.map(
        lambda items: (b'{"events":[' + b",".join(items) + b"]}", "application/json")
    )
    one = event_bytes().map(lambda item: (item, "application/json"))
    ndjson = events.map(lambda items: (b"\n".join(items), "application/x-ndjson"))
    noise = st.binary(max_size=60).map(lambda raw: (raw, "application/json"))
    return st.one_of(as_json, wrapped, one, ndjson, noise)


# --- what #22 found: big exponents, keys written with escapes, forms of many fields ------


def spelled(name: str) -> st.SearchStrategy[str]:
    """A key as JSON text, each character either itself or a \\u escape of it: the same
    key once decoded."""
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda escapes: (
            '"'
            + "".join(f"\\u{ord(c):04x}" if e else c for c, e in zip(name, escapes, strict=True))
            + '"'
        )
    )


def envelope(members: list[tuple[str, str]]) -> st.SearchStrategy[tuple[str, list[str]]]:
    """An object of the given (name, value text) members in any order, each name spelled
    any way and perhaps given twice (spelled any way again); with the names as decoded, in
    order, to tell whether it is ambiguous."""
    repeated = st.lists(st.sampled_from(range(len(members))), max_size=2)

    def build(twice: list[int]) -> st.SearchStrategy[tuple[str, list[str]]]:
        chosen = [*members, *(members[i] for i in twice)]
        return st.tuples(*(spelled(name) for name, _ in chosen), st.randoms()).map(
            lambda drawn: _shuffled(chosen, drawn[:-1], drawn[-1])
        )

    return repeated.flatmap(build)


def _shuffled(
    chosen: list[tuple[str, str]], names: tuple[str, ...], rng: Any
) -> tuple[str, list[str]]:
    order = list(range(len(chosen)))
    rng.shuffle(order)
    text = "{" + ",".join(f"{names[i]}:{chosen[i][1]}" for i in order) + "}"
    return text, [chosen[i][0] for i in order]


# Numbers in exponent form: small and huge exponents, the bound (400 digits) on both sides.
exponent_numbers = st.builds(
    lambda sign, mantissa, exponent, letter: f"{sign}{mantissa}{letter}{exponent}",
    st.sampled_from(["", "-"]),
    st.sampled_from(["1", "9", "1.5", "0", "0.00", "12345678901234567", "4.9406564584124654"]),
    st.one_of(
        st.integers(-30, 30),
        st.integers(380, 420),
        st.integers(-420, -380),
        st.sampled_from([131071, -16383, 200000, 308, -324]),
    ),
    st.sampled_from(["e", "E", "e+"]),
).map(lambda text: text.replace("e+-", "e-"))


def written_out_digits(literal: str) -> int:
    """Digits of a number as PostgreSQL stores it (independently of the service's formula:
    Decimal's own fixed-point text)."""
    return sum(c.isdigit() for c in format(Decimal(literal), "f"))


many_field_forms = st.tuples(
    st.integers(0, 40),  # other fields
    st.integers(0, 40),  # where data goes
    st.sampled_from(["data", "d%61ta", "%64ata"]),
    st.booleans(),  # a second data field
)


# --- gzip bodies as sequences of members (#22): empty, many, cut short, junk after -----


def gzip_members(payload: bytes, max_members: int) -> st.SearchStrategy[tuple[bytes, str]]:
    """`payload` gzipped as a sequence of members: split among one to four members at any
    points, empty members anywhere between them (a few, about the bound, or far over it),
    each at any compression level; then perhaps cut short or followed by junk. With what
    the body is, by construction: "ok" (it inflates to `payload`), "too_many" (more than
    `max_members` members), "truncated" or "junk"."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[bytes, str]:
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        room = max_members - len(pieces)  # empty members that still fit
        empties = draw(
            st.sampled_from(["few", "few", "few", "bound", "far"]).flatmap(
                lambda how: {
                    "few": st.integers(0, 4),
                    "bound": st.integers(max(0, room - 2), room + 2),
                    "far": st.just(3 * max_members),
                }[how]
            )
        )
        members = [gzip.compress(piece, draw(st.integers(0, 9)), mtime=0) for piece in pieces]
        for _ in range(empties):
            members.insert(draw(st.integers(0, len(members))), gzip.compress(b"", mtime=0))
        body = b"".join(members)
        if len(members) > max_members:
            return body, "too_many"
        damage = draw(st.sampled_from(["none", "truncated", "junk"]))
        if damage == "truncated":
            last = len(body) - len(members[-1])
            return body[: draw(st.integers(last + 1, len(body) - 1))], "truncated"
        if damage == "junk":
            # Not a zero byte first: gzip readers differ on trailing zeros (padding).
            junk = bytes([draw(st.integers(1, 255))]) + draw(st.binary(max_size=23))
            return body + junk, "junk"
        return body, "ok"

    return build()
