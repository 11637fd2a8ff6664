"""CORS: browsers may send events from any origin by default (write keys are public by
design, like PostHog's project tokens), and may read /metrics only from the origins
configured for it (none by default: read keys belong on servers)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from litestar.types import Send

from event_metrics.errors import error_json, send_json

Kind = Literal["ingest", "read"]
ALLOWED_HEADERS = b"authorization, content-type, content-encoding, x-request-id"
EXPOSED_HEADERS = b"x-request-id, retry-after, x-metrics-plan"
METHODS: dict[Kind, bytes] = {"ingest": b"POST, OPTIONS", "read": b"GET, OPTIONS"}
REFUSED_BODY = error_json("origin_not_allowed", "this origin may not call this route")


class CorsPolicy:
    """Which origins may call which routes (edge.py applies it to every exchange)."""

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

    def response_headers(self, kind: Kind, origin: bytes) -> list[tuple[bytes, bytes]]:
        wildcard = b"*" in self.origins[kind]
        headers = [
            (b"access-control-allow-origin", b"*" if wildcard else origin),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
        ]
        if not wildcard:
            headers.append((b"vary", b"Origin"))
        return headers


def _origins(listing: str) -> frozenset[bytes]:
    return frozenset(o.strip().rstrip("/").encode() for o in listing.split(",") if o.strip())


async def answer_preflight(send: Send, kind: Kind, allow_origin: bytes | None) -> None:
    """204 with what the browser may send, or 403 when the origin may not call the route."""
    if allow_origin is None:
        await send_json(send, 403, REFUSED_BODY)
        return
    headers = [
        (b"access-control-allow-origin", allow_origin),
        (b"access-control-allow-methods", METHODS[kind]),
        (b"access-control-allow-headers", ALLOWED_HEADERS),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    await send_json(send, 204, b"", headers)
