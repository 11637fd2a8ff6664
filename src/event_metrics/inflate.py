"""Gzip request bodies, inflated in bounded steps: both gzip paths (Content-Encoding: gzip
on every ingest route, and the bare gzip posthog-js sends) go through `Gunzip`.

A gzip body may hold several members one after another (RFC 1952, `cat a.gz b.gz`);
reading only the first would drop events silently. Three properties keep one body from
costing more than its size says, whoever sends it (on the SDK routes a body may carry its
key inside, so it is inflated before any key is checked):

- Linear in the input. zlib copies the input left over after a member ends
  (`unused_data`); fed the rest of the body each time, a body of many empty members cost
  a copy of the rest per member, quadratic: 2 MB took 6.6 s. Here zlib sees at most
  STEP_BYTES of input per call, so each member copies at most that much.
- Bounded before the work. At most MAX_GZIP_MEMBERS members and `max_bytes` of output:
  zlib is never asked for more output than the limit leaves room for, and a member past
  the bound is refused before it is inflated.
- In steps. Each step inflates at most STEP_BYTES in and out (a fraction of a
  millisecond); the caller gives the event loop its turn between steps, so other
  requests wait at most one step (docs/benchmarks.md measured this against a worker
  thread).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator

from event_metrics.body_errors import MalformedPayload, PayloadTooLarge

# Real clients send one member, `cat` a few; a body of thousands is made to cost.
MAX_GZIP_MEMBERS = 64
STEP_BYTES = 64 * 1024
GZIP = 31  # zlib's wbits for a gzip header and trailer


class Gunzip:
    """One gzip body, fed in pieces as they arrive; `result()` once all are fed."""

    __slots__ = ("_inflater", "_max_bytes", "_members", "_parts", "_size")

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._inflater: zlib._Decompress | None = None
        self._members = 0
        self._parts: list[bytes] = []
        self._size = 0

    def steps(self, data: bytes) -> Iterator[None]:
        """Inflate the next piece of the body, one bounded step per iteration."""
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            inflater = self._inflater
            if inflater is None or inflater.eof:  # a member begins here
                self._members += 1
                if self._members > MAX_GZIP_MEMBERS:
                    raise MalformedPayload(
                        f"a gzip body may hold at most {MAX_GZIP_MEMBERS} gzip members"
                        " (concatenated .gz files); this one has more"
                    )
                inflater = self._inflater = zlib.decompressobj(wbits=GZIP)
            window = view[offset : offset + STEP_BYTES]
            room = min(STEP_BYTES, self._max_bytes - self._size + 1)
            try:
                out = inflater.decompress(window, room)
            except zlib.error as exc:
                raise MalformedPayload(f"body is not valid gzip: {exc}") from None
            # What zlib did not take (output full, or the member ended) is fed again.
            offset += len(window) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            if out:
                self._size += len(out)
                if self._size > self._max_bytes:
                    raise PayloadTooLarge(f"decompressed body is over {self._max_bytes} bytes")
                self._parts.append(out)
            if offset < len(view):
                yield  # between steps; the caller's next read yields after the last

    def result(self) -> bytes:
        """The inflated body; refuses one whose last member is cut short."""
        if self._inflater is None or not self._inflater.eof:
            raise MalformedPayload("body is truncated gzip")
        return b"".join(self._parts)


async def feed(stream: Gunzip, data: bytes) -> None:
    """Inflate a piece of a body, giving the event loop its turn after every step."""
    for _ in stream.steps(data):
        await asyncio.sleep(0)


async def gunzip(body: bytes, max_bytes: int) -> bytes:
    """A whole gzip body, inflated without holding the event loop more than a step."""
    stream = Gunzip(max_bytes)
    await feed(stream, body)
    return stream.result()
