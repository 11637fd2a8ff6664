"""Gzip bodies (inflate.py), through both paths that read them: Content-Encoding: gzip
(payload.read_body) and the bare gzip of the SDK routes (sdk.json_body). The work is
linear in the body, bounded in members and output, and done in steps that let the event
loop run; anything that is not whole, valid gzip is a MalformedPayload."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from event_metrics import inflate, sdk
from event_metrics.inflate import MAX_GZIP_MEMBERS, STEP_BYTES
from event_metrics.payload import MalformedPayload, PayloadTooLarge, read_body

Unpack = Callable[[bytes, int], Awaitable[bytes]]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def by_content_encoding(body: bytes, max_bytes: int) -> bytes:
    # 1 MiB pieces: what uvicorn hands over when the body arrived before it was read.
    return await read_body(_chunks(body, 1 << 20), encoding="gzip", max_bytes=max_bytes)


async def bare(body: bytes, max_bytes: int) -> bytes:
    return await sdk.json_body(body, content_type="text/plain", max_bytes=max_bytes)


PATHS = [pytest.param(by_content_encoding, id="content-encoding"), pytest.param(bare, id="bare")]


class FedBytes:
    """Counts the bytes zlib is handed and those it makes, over every decompressobj."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        self.largest = 0
        self.made = 0
        real = zlib.decompressobj

        def make(*args: Any, **kwargs: Any) -> Any:
            return _Counting(real(*args, **kwargs), self)

        monkeypatch.setattr(zlib, "decompressobj", make)


class _Counting:
    def __init__(self, inner: Any, fed: FedBytes) -> None:
        self._inner, self._fed = inner, fed

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        self._fed.total += len(data)
        self._fed.largest = max(self._fed.largest, len(data))
        out: bytes = self._inner.decompress(data, max_length)
        self._fed.made += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("unpack", PATHS)
async def test_members_are_read_in_order_up_to_the_bound(unpack: Unpack) -> None:
    body = b"".join(gzip.compress(f"{n},".encode()) for n in range(MAX_GZIP_MEMBERS))
    expected = b"".join(f"{n},".encode() for n in range(MAX_GZIP_MEMBERS))
    assert await unpack(body, 10_000) == expected


@pytest.mark.parametrize("unpack", PATHS)
async def test_one_member_more_than_the_bound_is_refused_naming_it(unpack: Unpack) -> None:
    body = gzip.compress(b"") * (MAX_GZIP_MEMBERS + 1)
    with pytest.raises(MalformedPayload, match=f"at most {MAX_GZIP_MEMBERS} gzip members"):
        await unpack(body, 5 << 20)


@pytest.mark.parametrize("unpack", PATHS)
async def test_a_body_of_many_empty_members_is_refused_after_the_bound(
    unpack: Unpack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 MB of 20-byte members: fed the rest of the body per member, zlib was handed
    # about 100 GB (6.6 s on the event loop).
    body = gzip.compress(b"") * 100_000
    fed = FedBytes(monkeypatch)
    with pytest.raises(MalformedPayload, match="gzip members"):
        await unpack(body, 5 << 20)
    assert fed.total <= (MAX_GZIP_MEMBERS + 1) * STEP_BYTES


@pytest.mark.parametrize("unpack", PATHS)
async def test_the_work_is_linear_in_the_body(
    unpack: Unpack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As many members as allowed, each of incompressible bytes: every byte of input is
    # handed to zlib about once, never the whole rest of the body per member.
    pieces = [os.urandom(40_000) for _ in range(MAX_GZIP_MEMBERS)]
    body = b"".join(gzip.compress(piece) for piece in pieces)
    fed = FedBytes(monkeypatch)
    assert await unpack(body, 5 << 20) == b"".join(pieces)
    assert fed.total <= 2 * len(body)
    assert fed.largest <= STEP_BYTES


@pytest.mark.parametrize("unpack", PATHS)
async def test_output_is_bounded_before_it_is_made(
    unpack: Unpack, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = gzip.compress(b"\0" * (50 << 20))  # 50 MB in 50 KB
    fed = FedBytes(monkeypatch)
    with pytest.raises(PayloadTooLarge, match="over 1000000 bytes"):
        await unpack(bomb, 1_000_000)
    assert fed.made <= 1_000_001


@pytest.mark.parametrize("unpack", PATHS)
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(gzip.compress(b"[1]")[:-4], "truncated", id="truncated-trailer"),
        pytest.param(gzip.compress(b"[1]" * 1000)[:30], "truncated", id="truncated-data"),
        pytest.param(gzip.compress(b"[1]") + gzip.compress(b"")[:9], "truncated", id="cut-member"),
        pytest.param(b"\x1f\x8b" + os.urandom(64), "not valid gzip", id="garbage"),
        pytest.param(gzip.compress(b"[1]") + b"junk", "not valid gzip", id="trailing-junk"),
        pytest.param(gzip.compress(b"[1]")[:-8] + b"\0" * 8, "not valid gzip", id="wrong-checksum"),
    ],
)
async def test_anything_but_whole_gzip_is_malformed(
    unpack: Unpack, body: bytes, reason: str
) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        await unpack(body, 10_000)


async def test_an_empty_body_said_to_be_gzip_is_truncated() -> None:
    with pytest.raises(MalformedPayload, match="truncated"):
        await by_content_encoding(b"", 10_000)


@pytest.mark.parametrize("unpack", PATHS)
async def test_the_event_loop_runs_between_steps(unpack: Unpack) -> None:
    # 4 MiB of output: the loop must get its turn many times before the body is done.
    body = gzip.compress(os.urandom(1 << 20) * 4)
    turns = 0
    done = False

    async def count_turns() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    try:
        assert len(await unpack(body, 5 << 20)) == 4 << 20
    finally:
        done = True
        await counter
    assert turns >= (4 << 20) // STEP_BYTES // 2


def test_steps_are_bounded_in_and_out() -> None:
    stream = inflate.Gunzip(10 << 20)
    body = gzip.compress(b"x" * (1 << 20))  # 1 MiB out of about 1 KB in
    steps = sum(1 for _ in stream.steps(body))
    assert steps >= (1 << 20) // STEP_BYTES - 1
    assert stream.result() == b"x" * (1 << 20)
