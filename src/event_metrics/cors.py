"""CORS: browsers may send events from any origin by default (write keys are public by
design, like PostHog's project tokens), and may read /metrics only from the origins
configured for it (none by default: read keys belong on servers)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

Kind = Literal["ingest", "read"]
ALLOWED_HEADERS = b"authorization, content-type, content-encoding, x-request-id"
EXPOSED_HEADERS = b"x-request-id, retry-after, x-metrics-plan"
METHODS: dict[Kind, bytes] = {"ingest": b"POST, OPTIONS", "read": b"GET, OPTIONS"}
REFUSED_BODY = b'{"error":"origin_not_allowed","detail":"this origin may not call this route"}'


class CorsPolicy:
    def __init__(
        self, *, ingest_paths: Collection[str], ingest_origins: str, read_paths: Collection[str],
        read_origins: str,
    ) -> None:  # fmt: skip
        self.kinds: dict[str, Kind] = {path: "ingest" for path in ingest_paths}
        self.kinds |= {path: "read" for path in read_paths}
        self.origins: dict[Kind, frozenset[bytes]] = {
            "ingest": _origins(ingest_origins),
            "read": _origins(read_origins),
        }

    def allows(self, kind: Kind, origin: bytes) -> bool:
        allowed = self.origins[kind]
        return b"*" in allowed or origin in allowed


def _origins(listing: str) -> frozenset[bytes]:
    return frozenset(o.strip().rstrip("/").encode() for o in listing.split(",") if o.strip())


def middleware(app: ASGIApp, policy: CorsPolicy) -> ASGIApp:
    """Answer preflight requests, and add CORS headers to the answers of allowed origins."""

    async def with_cors(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        origin = preflight = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
        kind = policy.kinds.get(scope["path"]) if origin else None
        if origin is None or kind is None:
            await app(scope, receive, send)
            return
        allowed = policy.allows(kind, origin)
        wildcard = b"*" in policy.origins[kind]
        allow_origin = b"*" if wildcard else origin
        if scope["method"] == "OPTIONS" and preflight is not None:
            await _answer_preflight(send, kind, allow_origin if allowed else None)
            return
        if not allowed:
            await app(scope, receive, send)  # the browser withholds the answer itself
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"access-control-allow-origin", allow_origin),
                    (b"access-control-expose-headers", EXPOSED_HEADERS),
                ]
                if not wildcard:
                    extra.append((b"vary", b"Origin"))
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await app(scope, receive, send_with_cors)

    return with_cors


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status,
                                     "headers": headers}  # fmt: skip
    await send(start)
    done: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(done)


async def _answer_preflight(send: Send, kind: Kind, allow_origin: bytes | None) -> None:
    if allow_origin is None:
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(REFUSED_BODY)).encode())]  # fmt: skip
        await _answer(send, 403, headers, REFUSED_BODY)
        return
    headers = [
        (b"access-control-allow-origin", allow_origin),
        (b"access-control-allow-methods", METHODS[kind]),
        (b"access-control-allow-headers", ALLOWED_HEADERS),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    await _answer(send, 204, headers, b"")
