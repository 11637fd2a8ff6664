"""The HTTP server: uvicorn, with the limits a public endpoint needs against slow or
greedy clients.

uvicorn arms its keep-alive timer only after a response, so a connection that never
sends a complete request is held forever, and it bounds neither the head's size nor the
time a body may take. `GuardedHttpProtocol` adds, per connection: a deadline for each
request head and for its body (408, then close), a bound on the head's size (431), and a
cap on open connections (503 at once).

Deadlines cost no timer per request: each connection notes when its current phase
began, and one sweep per process, twice a second, closes those past their deadline.

A hang-up (SIGHUP: the terminal running `make serve` closes) stops every process as
SIGTERM does. Left to their defaults, the worker processes die at once and uvicorn's
supervisor restarts them, and a single-process serve dies without stopping the embedded
PostgreSQL, which PID 1 then adopts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType
from typing import TYPE_CHECKING, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.supervisors.multiprocess import Multiprocess

from event_metrics import telemetry
from event_metrics.errors import error_json
from event_metrics.settings import HttpSettings, Settings

if TYPE_CHECKING:
    from litestar import Litestar

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
_CLOSE = b"Connection: close\r\n"


def _answer(status: bytes, error: str, detail: str, extra: bytes = b"") -> bytes:
    body = error_json(error, detail)
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n" + extra + _CLOSE
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


HEAD_TIMEOUT = _answer(b"408 Request Timeout", "head_timeout", "the request head took too long")
BODY_TIMEOUT = _answer(b"408 Request Timeout", "body_timeout", "the request body took too long")
HEAD_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large", "head_too_large", "the request head is too large"
)

Phase = Literal["head", "body", "app"]


class Limits:
    __slots__ = ("body_timeout_s", "head_timeout_s", "max_connections", "max_head_bytes",
                 "too_many")  # fmt: skip

    def __init__(self, settings: HttpSettings) -> None:
        self.head_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_head_bytes = settings.max_header_bytes
        self.max_connections = settings.max_connections
        self.too_many = _answer(
            b"503 Service Unavailable", "too_many_connections", "too many open connections",
            f"Retry-After: {settings.retry_after_s}\r\n".encode(),
        )  # fmt: skip


@functools.cache
def _limits() -> Limits:
    # uvicorn builds one protocol per connection from an import path (so worker processes
    # can import it): the limits come from the environment, read once per process.
    return Limits(Settings.from_env().http)


_watched: weakref.WeakSet[GuardedHttpProtocol] = weakref.WeakSet()
_sweeping: set[asyncio.AbstractEventLoop] = set()


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    now = loop.time()
    for connection in list(_watched):
        connection.check_deadline(now)
    loop.call_later(SWEEP_INTERVAL_S, _sweep, loop)


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _OneSendPerResponse:
    """The transport as one response cycle sees it.

    uvicorn writes a response's head when the app starts it and its body after: two
    send() calls, and two TCP segments, for a small answer. Here the head waits for the
    body's first bytes and leaves with them: one send() per response. A response without
    body bytes (HEAD) sends its head when it completes, or when the cycle closes the
    connection. The cycle's only other write, 100 Continue before the response, passes
    at once; its first other write is the head (uvicorn 0.3x: `send` on
    http.response.start). The wrapper keeps no reference to the cycle: a cycle of
    references per request would leave every request's objects to the garbage
    collector, whose pauses showed as a p99 of 100+ ms.
    """

    __slots__ = ("_head", "_on_response", "_state", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._head = b""
        self._state: Literal["before", "held", "sent"] = "before"
        self._on_response = cycle.on_response
        cycle.on_response = self._completed

    def write(self, data: bytes) -> None:
        if self._state == "before" and data != _CONTINUE:
            self._head, self._state = data, "held"  # the head: wait for the body
            return
        if self._state == "held":
            data, self._head, self._state = self._head + data, b"", "sent"
        self._transport.write(data)

    def flush(self) -> None:
        if self._state == "held":
            head, self._head, self._state = self._head, b"", "sent"
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def _completed(self) -> None:
        self.flush()
        self._on_response()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines, a head size bound and
    a connection cap."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self._limits = _limits()
        self._phase: Phase | None = "head"  # None: idle between requests (keep-alive)
        self._since = self.loop.time()
        self._head_bytes = 0  # of the head being received, as far as it has come
        self._tail = b""  # its last bytes, where a blank line may begin
        self._discarding = False
        if self.loop not in _sweeping:
            _sweeping.add(self.loop)
            self.loop.call_later(SWEEP_INTERVAL_S, _sweep, self.loop)
        if len(self.connections) > limits.max_connections:
            self._refuse(limits.too_many)
            return
        _watched.add(self)

    def check_deadline(self, now: float) -> None:
        """Called by the sweep: close a connection whose head or body is overdue."""
        limits = self._limits
        if self._phase == "head" and now - self._since > limits.head_timeout_s:
            self._refuse(HEAD_TIMEOUT)
        elif self._phase == "body" and now - self._since > limits.body_timeout_s:
            started = self.cycle is not None and self.cycle.response_started
            self._refuse(b"" if started else BODY_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        """Answer, then close once the client has had a moment to read the answer.

        Closing while its request is still arriving would reset the connection and the
        client might never see why; so half-close, discard what still comes, and close.
        """
        self._phase = None
        _watched.discard(self)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's own answer, if any, goes nowhere
            self.cycle.message_event.set()
        if response:
            self.transport.write(response)
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._phase is None:  # the first bytes of the next request on this connection
            self._phase, self._since = "head", self.loop.time()
            self._head_bytes, self._tail = 0, b""
        if self._phase == "head" and self._head_too_large(data):
            self._refuse(HEAD_TOO_LARGE)
            return
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the head being received, up to and with its blank line, is over the
        limit. Measured before the parser sees the bytes: a whole head that arrives in
        one read is bounded like one that arrives in many (the parser would take it whole
        and start the request)."""
        end = None  # where the head ends in this read
        if self._tail:  # the blank line may have begun in the previous read
            seam = (self._tail + data[:3]).find(b"\r\n\r\n")
            if seam >= 0:
                end = seam + 4 - len(self._tail)
        if end is None:
            found = data.find(b"\r\n\r\n")
            end = found + 4 if found >= 0 else None
        if end is None:  # the head goes on
            end = len(data)
            self._tail = (self._tail + data)[-3:]
        self._head_bytes += end
        return self._head_bytes > self._limits.max_head_bytes

    def on_headers_complete(self) -> None:
        self._phase, self._since = "body", self.loop.time()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:  # a new request's cycle
            self.cycle.transport = _OneSendPerResponse(self.transport, self.cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._phase = "app"  # the whole request is in; the app has no deadline here
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == "app":
            self._phase = None  # idle: uvicorn's keep-alive timer closes it in time

    def connection_lost(self, exc: Exception | None) -> None:
        _watched.discard(self)
        super().connection_lost(exc)


def raise_open_files_limit() -> None:
    """Let the process hold as many sockets as the hard limit allows (often 1024 soft)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(
    settings: HttpSettings,
    *,
    shutdown_timeout_s: float,
    alongside: Callable[[], AbstractContextManager[object]] | None = None,
) -> None:
    """Serve the app with uvicorn; worker processes build it from the environment.
    `alongside` runs another process for as long (the replicator): it shares the
    Prometheus files with the workers."""

    raise_open_files_limit()
    processes = settings.workers + (alongside is not None)
    with telemetry.multiprocess_dir(processes), (alongside or contextlib.nullcontext)():
        _run_uvicorn(settings, shutdown_timeout_s)


def _run_uvicorn(settings: HttpSettings, shutdown_timeout_s: float) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    config = uvicorn.Config(
        "event_metrics.http_server:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="event_metrics.http_server:GuardedHttpProtocol",
        access_log=False,
        log_level="warning",
        log_config=None,  # logs.configure already set the format, for every logger
        server_header=False,
        # Nothing here reads the client's address or scheme, so X-Forwarded-* need not be
        # parsed: uvicorn's proxy-headers layer cost ~2% of a single event's CPU.
        proxy_headers=False,
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        timeout_graceful_shutdown=round(shutdown_timeout_s) + 5,
    )
    # What uvicorn.run does, with a supervisor of our own (hang-ups, below).
    if config.workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def worker_app() -> Litestar:
    """uvicorn's app factory, run in each process that serves HTTP before it serves."""
    from event_metrics.app import app_from_env

    stop_on_hang_up()
    return app_from_env()


def stop_on_hang_up() -> None:
    """From now on, SIGHUP stops this process as SIGTERM does."""
    signal.signal(signal.SIGHUP, _terminate)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Through whatever handles SIGTERM at that moment: uvicorn's graceful shutdown while
    # serving, serve's clean exit (which stops the embedded PostgreSQL) before and after.
    signal.raise_signal(signal.SIGTERM)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes; a hang-up stops them all (uvicorn's own
    restarts them, and the workers, in the same process group, got the hang-up too)."""

    def handle_hup(self) -> None:
        log.info("hang-up: stopping")
        self.should_exit.set()
