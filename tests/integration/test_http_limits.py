"""Limits of the real HTTP server (uvicorn with our protocol) against slow or greedy
clients, on raw sockets: every limit is enforced before the work is done."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from conftest import Keys, LiveServer, live_server

EVENT = json.dumps({"event_name": "e", "user_id": "u"}).encode()


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    with live_server(
        database_url,
        header_timeout_ms="1000",
        body_timeout_ms="1000",
        max_connections="1200",
        max_header_bytes="16384",
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def connection(
    server: LiveServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def events_head(keys: Keys, length: int, *, expect_continue: bool = False) -> bytes:
    """The head of a POST /events with the default project's write key."""
    return (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {keys.default.write}\r\nContent-Length: {length}\r\n".encode()
        + (b"Expect: 100-continue\r\n" if expect_continue else b"")
        + b"\r\n"
    )


async def read_all(reader: asyncio.StreamReader, timeout_s: float = 10) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout_s)


async def test_oversized_content_length_is_refused_before_100_continue(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    async with connection(server) as (reader, writer):
        writer.write(events_head(keys, 1_000_000_000_000, expect_continue=True))
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 413"), status


async def test_a_connection_that_sends_nothing_is_closed(server: LiveServer) -> None:
    async with connection(server) as (reader, _):
        started = time.monotonic()
        answer = await read_all(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.8 < time.monotonic() - started < 5


async def test_a_head_dripped_byte_by_byte_is_cut_off(server: LiveServer) -> None:
    async with connection(server) as (reader, writer):
        started = time.monotonic()
        answer = asyncio.create_task(read_all(reader))
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for byte in head:
            if answer.done() or time.monotonic() - started > 3:
                break
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.sleep(0.05)
        assert (await answer).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4


async def test_an_oversized_head_is_refused(server: LiveServer) -> None:
    async with connection(server) as (reader, writer):
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for _ in range(40):
                writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                await writer.drain()
        answer = await read_all(reader)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def head_of(size: int, *, path: bytes = b"/health") -> bytes:
    """A GET head of exactly `size` bytes, blank line included, padded by one header."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("size", [70_000, 100_000])
@pytest.mark.parametrize("piece", [None, 1000, 16384], ids=["one-write", "1k-pieces", "16k-pieces"])
async def test_an_oversized_head_is_431_however_it_arrives(
    server: LiveServer, size: int, piece: int | None
) -> None:
    # A whole head in one read was served: only a head still incomplete after a read
    # was measured.
    head = head_of(size)
    async with connection(server) as (reader, writer):
        with contextlib.suppress(ConnectionError, RuntimeError):
            for start in range(0, len(head), piece or len(head)):
                writer.write(head[start : start + (piece or len(head))])
                await writer.drain()
        answer = await read_all(reader)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "head_too_large"


async def test_the_head_limit_counts_the_head_alone(server: LiveServer, keys: Keys) -> None:
    limit = 16384  # the fixture's max_header_bytes, blank line included
    async with connection(server) as (reader, writer):
        writer.write(head_of(limit))
        await writer.drain()
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200"), head
        # A body in the same read as its head is not part of the head.
        padded = events_head(keys, len(EVENT))
        padded = padded[:-2] + b"X-Pad: " + b"a" * (limit - len(padded) - 9) + b"\r\n\r\n"
        assert len(padded) == limit
        writer.write(padded + EVENT)
        await writer.drain()
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(body)["accepted"] == 1
        writer.write(head_of(limit + 1))
        await writer.drain()
        answer = await read_all(reader)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


async def test_a_body_that_stops_arriving_gets_408_and_stores_nothing(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    async with connection(server) as (reader, writer):
        writer.write(events_head(keys, len(EVENT)) + EVENT[:10])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 408"), status
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_no_server_header_and_a_request_id(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/health")
    assert "server" not in response.headers
    assert response.headers["x-request-id"]


async def test_other_clients_are_served_while_1000_slow_connections_are_open(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    slow: list[asyncio.StreamWriter] = []
    try:
        for _ in range(1000):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /events HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
            slow.append(writer)
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            for n in range(50):
                response = await client.post(
                    "/events",
                    content=EVENT,
                    headers={"Content-Type": "application/json", **keys.default.auth()},
                )
                assert response.status_code == 200, (n, response.text)
    finally:
        for writer in slow:
            writer.close()
    assert await db.fetchval("SELECT count(*) FROM events") == 50


async def test_connections_over_the_cap_get_503_at_once(database_url: str) -> None:
    with live_server(database_url, max_connections="20", header_timeout_ms="5000") as capped:
        held = []
        try:
            for _ in range(20):
                held.append(await asyncio.open_connection("127.0.0.1", capped.port))
            await asyncio.sleep(0.2)  # let the server accept them all
            reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
            answer = await read_all(reader, timeout_s=3)
            writer.close()
        finally:
            for _, held_writer in held:
                held_writer.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 1" in answer


async def read_response(reader: asyncio.StreamReader, *, body: bool = True) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5) if body else b""


async def test_responses_on_one_connection_arrive_whole_and_in_order(
    server: LiveServer, db: asyncpg.Connection, keys: Keys
) -> None:
    # A response's head waits for its body so that both leave in one send: pipelined
    # requests, a HEAD (a head and no body) and 100 Continue must all still arrive.
    async with connection(server) as (reader, writer):
        writer.write(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"OPTIONS /events HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await writer.drain()
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["status"], head
        head, _ = await read_response(reader, body=False)
        assert head.startswith(b"HTTP/1.1 405"), head
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204"), head
        writer.write(events_head(keys, len(EVENT), expect_continue=True))
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(EVENT)
        await writer.drain()
        head, body = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["accepted"] == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 1
