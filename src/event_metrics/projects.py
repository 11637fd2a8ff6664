"""Projects and their API keys in PostgreSQL: what `event-metrics projects` and
`event-metrics keys` do, and the default project's first keys on an embedded database."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from event_metrics.auth import Scope, display_prefix, hash_secret, new_secret

DEFAULT_PROJECT = "default"

CREATE_PROJECT = "INSERT INTO projects (name) VALUES ($1) RETURNING id"
PROJECT_ID = "SELECT id FROM projects WHERE name = $1"
LIST_PROJECTS = """
SELECT p.name, p.id, p.created_at,
       count(k.id) FILTER (WHERE k.scope = 'write' AND k.revoked_at IS NULL) AS write_keys,
       count(k.id) FILTER (WHERE k.scope = 'read' AND k.revoked_at IS NULL) AS read_keys
FROM projects p LEFT JOIN api_keys k ON k.project_id = p.id
GROUP BY p.id ORDER BY p.name
"""
CREATE_KEY = """
INSERT INTO api_keys (project_id, scope, secret_hash, prefix) VALUES ($1, $2, $3, $4)
"""
LIST_KEYS = """
SELECT k.prefix, p.name AS project, k.scope, k.created_at, k.revoked_at
FROM api_keys k JOIN projects p ON p.id = k.project_id
WHERE $1::text IS NULL OR p.name = $1
ORDER BY p.name, k.created_at, k.prefix
"""
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL
RETURNING prefix
"""
EVER_HAD_KEYS = "SELECT EXISTS (SELECT 1 FROM api_keys WHERE project_id = $1)"


class ProjectExists(Exception):
    """A project of that name exists already."""


class NotFound(Exception):
    """No project or key of that name or prefix."""


class NewKey(NamedTuple):
    key: str  # the secret, shown once
    prefix: str


async def create_project(connection: asyncpg.Connection, name: str) -> tuple[NewKey, NewKey]:
    """A project with one write key and one read key."""
    async with connection.transaction():
        try:
            project_id = await connection.fetchval(CREATE_PROJECT, name)
        except asyncpg.UniqueViolationError:
            raise ProjectExists(f"project {name!r} already exists") from None
        except asyncpg.CheckViolationError:
            raise ValueError(
                "a project name is 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            ) from None
        return (
            await _insert_key(connection, project_id, "write"),
            await _insert_key(connection, project_id, "read"),
        )


async def create_key(connection: asyncpg.Connection, project: str, scope: Scope) -> NewKey:
    project_id = await connection.fetchval(PROJECT_ID, project)
    if project_id is None:
        raise NotFound(f"no project named {project!r}")
    return await _insert_key(connection, project_id, scope)


async def _insert_key(connection: asyncpg.Connection, project_id: int, scope: Scope) -> NewKey:
    while True:  # a prefix is 48 random bits: a clash is rare, and simply retried
        secret = new_secret(scope)
        try:
            await connection.execute(
                CREATE_KEY, project_id, scope, hash_secret(secret), display_prefix(secret)
            )
        except asyncpg.UniqueViolationError:
            continue
        return NewKey(secret, display_prefix(secret))


async def list_projects(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    return [_plain(row) for row in await connection.fetch(LIST_PROJECTS)]


async def list_keys(connection: asyncpg.Connection, project: str | None) -> list[dict[str, Any]]:
    """Every key's prefix, project, scope and dates: never a secret (none is stored)."""
    if project is not None and await connection.fetchval(PROJECT_ID, project) is None:
        raise NotFound(f"no project named {project!r}")
    return [_plain(row) for row in await connection.fetch(LIST_KEYS, project)]


async def revoke_key(connection: asyncpg.Connection, prefix: str) -> None:
    if await connection.fetchval(REVOKE_KEY, prefix) is None:
        raise NotFound(f"no active key with prefix {prefix!r}")


async def first_default_keys(connection: asyncpg.Connection) -> tuple[NewKey, NewKey] | None:
    """Keys for the default project if it never had any (a new embedded database)."""
    async with connection.transaction():
        project_id = await connection.fetchval(PROJECT_ID + " FOR UPDATE", DEFAULT_PROJECT)
        if project_id is None or await connection.fetchval(EVER_HAD_KEYS, project_id):
            return None
        return (
            await _insert_key(connection, project_id, "write"),
            await _insert_key(connection, project_id, "read"),
        )


def _plain(row: asyncpg.Record) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dict(row).items()}
