"""The response transport that sends a response's head with its body: what it writes
and when, and that it leaves a finished request's objects to reference counting; and the
head's size, measured whatever the reads look like."""

from __future__ import annotations

import gc
import itertools
import weakref
from types import SimpleNamespace
from typing import Any

from event_metrics.http_server import GuardedHttpProtocol, _OneSendPerResponse


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


class Protocol:
    """Like uvicorn's: the cycle's on_response is the protocol's, not the cycle's own."""

    def __init__(self) -> None:
        self.completed = 0
        self.cycle: Any = None

    def on_response_complete(self) -> None:
        self.completed += 1


class Cycle:
    def __init__(self, protocol: Protocol, transport: Transport) -> None:
        self.on_response = protocol.on_response_complete
        self.transport: Any = _OneSendPerResponse(transport, self)  # type: ignore[arg-type]


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_the_head_leaves_with_the_body_in_one_write() -> None:
    transport, protocol = Transport(), Protocol()
    cycle = Cycle(protocol, transport)
    cycle.transport.write(HEAD)
    assert transport.writes == []
    cycle.transport.write(b"{}")
    cycle.on_response()
    assert transport.writes == [HEAD + b"{}"]
    assert protocol.completed == 1


def test_100_continue_is_not_held() -> None:
    transport, protocol = Transport(), Protocol()
    cycle = Cycle(protocol, transport)
    cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.transport.write(HEAD)
    cycle.transport.write(b"{}")
    assert transport.writes[1:] == [HEAD + b"{}"]


def test_a_head_without_body_leaves_when_the_response_completes() -> None:
    transport, protocol = Transport(), Protocol()
    cycle = Cycle(protocol, transport)
    cycle.transport.write(HEAD)  # a HEAD request: uvicorn writes no body
    cycle.on_response()
    assert transport.writes == [HEAD]
    assert protocol.completed == 1


def test_closing_sends_a_held_head_first_and_later_writes_pass() -> None:
    transport, protocol = Transport(), Protocol()
    cycle = Cycle(protocol, transport)
    cycle.transport.write(HEAD)
    cycle.transport.close()
    assert (transport.writes, transport.closed) == ([HEAD], True)
    other = Cycle(protocol, Transport())
    other.transport.write(HEAD)
    other.transport.write(b"{")
    other.transport.write(b"}")  # a body in two parts: the second goes straight out
    assert other.transport._transport.writes == [HEAD + b"{", b"}"]
    assert other.transport.get_extra_info("peername") == "info:peername"


def test_a_finished_cycle_is_freed_without_the_garbage_collector() -> None:
    # A reference cycle per request (cycle -> transport wrapper -> cycle) left every
    # request to the collector, whose pauses gave a p99 over 100 ms under load.
    transport, protocol = Transport(), Protocol()
    gc.disable()
    try:
        cycle = Cycle(protocol, transport)
        protocol.cycle = cycle
        cycle.transport.write(HEAD)
        cycle.transport.write(b"{}")
        cycle.on_response()
        cycle.on_response = lambda: None  # what uvicorn's run_asgi does when it ends
        gone = weakref.ref(cycle)
        protocol.cycle = None  # the connection's next request replaces it
        del cycle
        assert gone() is None
    finally:
        gc.enable()


# --- the head's size, measured before the parser sees it ----------------------------------


def _head_reads(head: bytes, body: bytes, cuts: tuple[int, ...]) -> list[bool]:
    """Feed head + body in reads cut at `cuts`; whether each read found the head too large
    (with the body in the same read as the end of the head, as a client may send it)."""
    state = SimpleNamespace(_head_bytes=0, _tail=b"", _limits=SimpleNamespace(max_head_bytes=64))
    data = head + body
    bounds = [0, *cuts, len(data)]
    verdicts = []
    for start, end in itertools.pairwise(bounds):
        if start >= len(head):
            break  # the head is complete: the protocol stops measuring
        verdicts.append(GuardedHttpProtocol._head_too_large(state, data[start:end]))  # type: ignore[arg-type]
    return verdicts


def test_a_head_at_the_limit_passes_however_it_is_cut_and_whatever_follows() -> None:
    head = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (64 - 27) + b"\r\n\r\n"
    assert len(head) == 64
    for first in range(1, len(head) + 1):
        for second in range(first, len(head) + 1):
            cuts = tuple(sorted({first, second}))
            assert not any(_head_reads(head, b"{}" * 100, cuts)), cuts


def test_a_head_one_byte_over_is_too_large_however_it_is_cut() -> None:
    head = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (65 - 27) + b"\r\n\r\n"
    assert len(head) == 65
    for first in range(1, len(head) + 1):
        for second in range(first, len(head) + 1):
            cuts = tuple(sorted({first, second}))
            assert any(_head_reads(head, b"{}", cuts)), cuts
