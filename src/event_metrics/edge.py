"""What every HTTP exchange gets before routing, in one ASGI layer: a request id (set for
the logs, echoed in X-Request-Id), CORS (preflights answered here, headers added to the
answers of allowed origins) and, when it is on, its access log line. One layer, not
three: each costs a coroutine per request."""

from __future__ import annotations

from collections.abc import Collection

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from event_metrics import access_log, logs, request_ids, telemetry
from event_metrics.cors import CorsPolicy, answer_preflight


def middleware(
    app: ASGIApp, policy: CorsPolicy, routes: Collection[str], *, access: bool = False
) -> ASGIApp:
    """`routes`: the paths counted under their own name in the requests metric (and the
    access log); any other path is counted as `/schema` (the docs pages) or `other`, so
    the labels stay few. `access`: write the access log."""
    known = frozenset(routes)

    async def edge(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = origin = preflight = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
        request_id = request_ids.assign(incoming)
        token = logs.request_id.set(request_id)
        extra = [(b"x-request-id", request_id.encode("ascii"))]
        path = scope["path"].rstrip("/")
        route = path if path in known else "/schema" if path.startswith("/schema") else "other"
        kind = policy.kinds.get(path) if origin is not None else None
        entry = access_log.Entry() if access else None
        entry_token = access_log.current.set(entry) if entry is not None else None
        try:
            if kind is not None and origin is not None:
                allowed = policy.allows(kind, origin)
                if scope["method"] == "OPTIONS" and preflight is not None:
                    headers = policy.response_headers(kind, origin) if allowed else None
                    await answer_preflight(
                        _adding(send, extra, route, entry), kind,
                        headers[0][1] if headers else None,
                    )  # fmt: skip
                    return
                if allowed:
                    extra += policy.response_headers(kind, origin)
            await app(scope, receive, _adding(send, extra, route, entry))
        finally:
            if entry is not None and entry_token is not None:
                access_log.write(entry, scope["method"][:32], route)
                access_log.current.reset(entry_token)
            logs.request_id.reset(token)

    return edge


def _adding(
    send: Send, headers: list[tuple[bytes, bytes]], route: str, entry: access_log.Entry | None
) -> Send:
    """Add the headers to the answer, and count it by route and status (and note the
    status for the access log)."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
            telemetry.count_request(route, message["status"])
            if entry is not None:
                entry.status = message["status"]
        await send(message)

    return send_with_headers
