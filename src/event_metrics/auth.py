"""API keys: their format, how a request presents one, and the in-process cache that
checks them without a database round trip.

A key is `emw_` (write) or `emr_` (read) and 32 characters of URL-safe base64: 192
random bits. The database keeps only its SHA-256 and a short, non-secret prefix. Each
process holds the active keys' hashes in memory and reloads them every
`KEY_REFRESH_MS`, so a revoked key stops working everywhere within that time; a key it
has not seen yet (created a moment ago) triggers one early reload, at most every 100 ms.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import asyncpg

from event_metrics.worker import Worker

log = logging.getLogger(__name__)

Scope = Literal["write", "read"]
MARKERS: dict[str, Scope] = {"emw_": "write", "emr_": "read"}
PREFIX_LENGTH = 12  # the marker and 8 characters: what people see, list and revoke by
MISS_RELOAD_INTERVAL_S = 0.1

ACTIVE_KEYS = "SELECT secret_hash, project_id, scope FROM api_keys WHERE revoked_at IS NULL"


class MissingCredentials(Exception):
    """The request carries no key."""


class InvalidCredentials(Exception):
    """The key is malformed, unknown or revoked."""


class WrongScope(Exception):
    """The key is valid but may not do this (a read key writing, or the reverse)."""


def new_secret(scope: Scope) -> str:
    marker = "emw_" if scope == "write" else "emr_"
    return marker + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def display_prefix(secret: str) -> str:
    return secret[:PREFIX_LENGTH]


def secret_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key in `Authorization: Bearer <key>`, or in HTTP Basic as the user name with
    an empty password (what Segment-style SDKs send); None when there is no such header."""
    for name, value in headers:
        if name == b"authorization":
            return secret_from_authorization(value)
    return None


def secret_from_authorization(value: bytes) -> str:
    scheme, _, credentials = value.strip().partition(b" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == b"bearer" and credentials:
        return credentials.decode("latin-1")
    if scheme == b"basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidCredentials("the Basic credentials are not valid base64") from None
        user, _, password = decoded.partition(":")
        if user and not password:
            return user
        raise InvalidCredentials("send the key as the Basic user name, with an empty password")
    raise InvalidCredentials("the Authorization header must be 'Bearer <key>' or Basic")


class Grant(NamedTuple):
    project_id: int
    scope: Scope


class KeyStore(Worker):
    """The active keys of every project, by SHA-256, kept current by a worker that reloads
    them every refresh_s; a failed reload keeps the last good cache and is retried."""

    def __init__(self, database_url: str, *, refresh_s: float, retry_max_s: float) -> None:
        super().__init__("key cache", log, retry_initial_s=0.1, retry_max_s=retry_max_s)
        self.database_url = database_url
        self.refresh_s = refresh_s
        self._grants: dict[bytes, Grant] = {}
        # Keys already checked since the last reload, by their text: a request then costs
        # a dict lookup instead of a SHA-256. Only valid keys enter; a reload empties it.
        self._checked: dict[str, Grant] = {}
        self._loaded_at = 0.0
        self._reloading: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._connection: asyncpg.Connection | None = None

    def status(self) -> dict[str, Any]:
        """What /health shows: the cache's state and age, nothing per project."""
        age = time.monotonic() - self._loaded_at if self._loaded_at else None
        return {
            "state": self.loop_state.state,
            "age_s": None if age is None else round(age, 3),
            "last_error": self.loop_state.last_error,
        }

    def authorize_checked(self, secret: str | None, scope: Scope) -> int | None:
        """The project of a key checked since the last reload, without awaiting anything;
        None when authorize() must decide."""
        grant = self._checked.get(secret) if secret is not None else None
        if grant is None or grant.scope != scope:
            return None
        return grant.project_id

    async def authorize(self, secret: str | None, scope: Scope) -> int:
        """The project a key may act for with `scope`; raise when it may not."""
        if secret is None:
            raise MissingCredentials(f"this route needs a {scope} key: Authorization: Bearer <key>")
        grant = self._checked.get(secret)
        if grant is None:
            grant = await self._look_up(secret)
            self._checked[secret] = grant
        if grant.scope != scope:
            raise WrongScope(f"this is a {grant.scope} key; this route needs a {scope} key")
        return grant.project_id

    async def _look_up(self, secret: str) -> Grant:
        if secret[:4] not in MARKERS or len(secret) > 200:
            raise InvalidCredentials("that is not an event-metrics key")
        digest = hash_secret(secret)
        grant = self._grants.get(digest)
        if grant is None and time.monotonic() - self._loaded_at > MISS_RELOAD_INTERVAL_S:
            await self._reload_once()  # created a moment ago? at most every 100 ms
            grant = self._grants.get(digest)
        if grant is None:
            raise InvalidCredentials("unknown or revoked key")
        return grant

    async def _reload_once(self) -> None:
        # Concurrent misses share one reload.
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload())
        with contextlib.suppress(Exception):  # the background loop reports failures
            await asyncio.shield(self._reloading)

    async def _reload(self) -> None:
        async with self._lock:  # the periodic reload and a miss's share one connection
            if self._connection is None or self._connection.is_closed():
                self._connection = await asyncpg.connect(self.database_url, timeout=5)
            try:
                rows = await self._connection.fetch(ACTIVE_KEYS, timeout=5)
            except Exception:
                connection, self._connection = self._connection, None
                connection.terminate()
                raise
            self._grants = {bytes(row[0]): Grant(row[1], row[2]) for row in rows}
            self._checked = {}
            self._loaded_at = time.monotonic()

    async def cycle(self) -> float:
        await self._reload()
        self.loop_state.set("running")
        return self.refresh_s

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
