"""The HTTP server: uvicorn, with the limits a public endpoint needs against slow or
greedy clients.

uvicorn arms its keep-alive timer only after a response, so a connection that never
sends a complete request head is held forever, and it does not bound the head's size.
`GuardedHttpProtocol` adds, per connection: a deadline for each request head (408, then
close), a bound on its size (431), and a cap on open connections (503 at once). The body
deadline is the ingest handler's (payload.read_request_body).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from event_metrics.settings import Settings

log = logging.getLogger(__name__)

_CLOSE = b"Connection: close\r\nContent-Length: 0\r\n\r\n"
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\n" + _CLOSE
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + _CLOSE


class Limits:
    __slots__ = ("head_timeout_s", "max_connections", "max_head_bytes", "retry_after_s")

    def __init__(self, settings: Settings) -> None:
        self.head_timeout_s = settings.header_timeout_ms / 1000
        self.max_head_bytes = settings.max_header_bytes
        self.max_connections = settings.max_connections
        self.retry_after_s = settings.retry_after_seconds


@functools.cache
def _limits() -> Limits:
    # uvicorn builds one protocol per connection from an import path (so worker processes
    # can import it): the limits come from the environment, read once per process.
    return Limits(Settings.from_env())


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size bound and a
    connection cap."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self._limits = _limits()
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = False
        if len(self.connections) > limits.max_connections:
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\n"
                + f"Retry-After: {limits.retry_after_s}\r\n".encode()
                + _CLOSE
            )
            transport.close()
            return
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self._limits.head_timeout_s, self._head_timed_out
            )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, response: bytes) -> None:
        """Answer, then close once the client has had a moment to read the answer.

        Closing while its request is still arriving would reset the connection and the
        client might never see why; so half-close, discard what still comes, and close.
        """
        self._disarm_head_timer()
        if self.transport.is_closing():
            return
        self.transport.write(response)
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(REQUEST_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        waiting_for_head = self._head_timer is not None
        super().data_received(data)
        if waiting_for_head and self._head_timer is not None:
            # Still no complete head after this chunk: bound what the parser holds.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head_bytes:
                self._refuse(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_timer()  # a keep-alive connection's next request starts here

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def raise_open_files_limit() -> None:
    """Let the process hold as many sockets as the hard limit allows (often 1024 soft)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(settings: Settings) -> None:
    """Serve the app with uvicorn; worker processes build it from the environment."""
    import uvicorn

    raise_open_files_limit()
    uvicorn.run(
        "event_metrics.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.http_workers,
        loop="uvloop",
        http="event_metrics.http_server:GuardedHttpProtocol",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_keep_alive=max(1, settings.keepalive_timeout_ms // 1000),
        timeout_graceful_shutdown=settings.shutdown_timeout_ms // 1000 + 5,
    )
