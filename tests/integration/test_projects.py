"""Projects and API keys: every write and every read is authorized and confined to one
project; refusals store nothing; keys never reach a log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from conftest import SECRETS, ClientFactory, Keys, LiveServer, live_server, wait_until
from event_metrics import projects

WINDOW = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}


def event(key: str, user: str = "u1", name: str = "view", **fields: Any) -> dict[str, Any]:
    return {"event_name": name, "user_id": user, "idempotency_key": key,
            "timestamp": "2026-11-01T10:00:00Z", **fields}  # fmt: skip


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT p.name, count(e.id) FROM projects p LEFT JOIN events e ON e.project_id = p.id "
        "GROUP BY p.name"
    )
    return {name: count for name, count in rows}


@pytest.fixture
async def revoked(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        key = await projects.create_key(connection, "default", "write")
        await projects.revoke_key(connection, key.prefix)
    finally:
        await connection.close()
    SECRETS.add(key.key)
    return key.key


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the matrix ----------------------------------------------------------------------------


CASES = ["no key", "malformed", "basic with password", "unknown", "revoked", "other project",
         "wrong scope", "right key", "right key as basic"]  # fmt: skip


def authorization(case: str, keys: Keys, revoked: str, scope: str) -> str | None:
    own = keys.default.write if scope == "write" else keys.default.read
    theirs = keys.other.write if scope == "write" else keys.other.read
    wrong = keys.default.read if scope == "write" else keys.default.write
    return {
        "no key": None,
        "malformed": "Token " + own,
        "basic with password": basic(own, "secret"),
        "unknown": "Bearer emw_" + "A" * 32,
        "revoked": "Bearer " + revoked,
        "other project": "Bearer " + theirs,
        "wrong scope": "Bearer " + wrong,
        "right key": "Bearer " + own,
        "right key as basic": basic(own),
    }[case]


REFUSED = {
    "no key": (401, "missing_credentials"),
    "malformed": (401, "invalid_credentials"),
    "basic with password": (401, "invalid_credentials"),
    "unknown": (401, "invalid_credentials"),
    "revoked": (401, "invalid_credentials"),
    "wrong scope": (403, "wrong_scope"),
}


@pytest.mark.parametrize("case", CASES)
async def test_post_events_needs_a_write_key(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys, revoked: str, case: str
) -> None:
    header = authorization(case, keys, revoked, "write")
    headers = {"Authorization": header} if header else {}
    async with make_client() as client:
        client.auth = None
        response = await client.post("/events", json=[event("a"), event("b")], headers=headers)
    stored = await counts(db)
    if case in REFUSED:
        status, code = REFUSED[case]
        assert (response.status_code, response.json()["error"]) == (status, code)
        if status == 401:
            assert "Bearer" in response.headers["www-authenticate"]
        assert sum(stored.values()) == 0
    else:
        assert response.status_code == 200, response.text
        owner = "other" if case == "other project" else "default"
        assert stored == {"default": 0, "other": 0, owner: 2}


@pytest.mark.parametrize("case", CASES)
async def test_get_metrics_needs_a_read_key_and_answers_for_its_project(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys, revoked: str, case: str
) -> None:
    async with make_client() as client:
        for project, count in ((keys.default, 3), (keys.other, 5)):
            batch = [event(f"k{n}", user=f"u{n}") for n in range(count)]
            response = await client.post("/events", json=batch, headers=project.auth("write"))
            assert response.status_code == 200
        header = authorization(case, keys, revoked, "read")
        client.auth = None
        response = await client.get(
            "/metrics", params=WINDOW, headers={"Authorization": header} if header else {}
        )
    if case in REFUSED:
        status, code = REFUSED[case]
        assert (response.status_code, response.json()["error"]) == (status, code)
    else:
        assert response.status_code == 200, response.text
        expected = 5 if case == "other project" else 3
        assert response.json()["total"] == {"events": expected, "unique_users": expected}


@pytest.mark.parametrize("case", CASES)
async def test_health_is_public(
    client: AsyncTestClient[Any], keys: Keys, revoked: str, case: str
) -> None:
    header = authorization(case, keys, revoked, "read")
    client.auth = None
    response = await client.get("/health", headers={"Authorization": header} if header else {})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert "project" not in json.dumps(body)


# --- two projects with the same keys, names and users ---------------------------------------


def project_events(seed: int) -> list[dict[str, Any]]:
    start = datetime(2026, 10, 30, tzinfo=UTC)
    return [
        event(f"k{n}", user=f"u{(n * seed) % 13}", name=("view", "buy")[n % 2],
              channel=("web", "ios", None)[n % 3] or "",
              timestamp=(start + timedelta(minutes=97 * n)).isoformat())
        for n in range(120)
    ]  # fmt: skip


def oracle(events: list[dict[str, Any]], group_by: tuple[str, ...]) -> dict[Any, tuple[int, int]]:
    """Per UTC day and group: (events, unique users), from the events a project sent."""
    cells: dict[Any, list[str]] = {}
    for e in events:
        day = e["timestamp"][:10]
        key = (day, *((e.get(d) or None) for d in group_by))
        cells.setdefault(key, []).append(e["user_id"])
    return {key: (len(users), len(set(users))) for key, users in cells.items()}


async def test_two_projects_with_the_same_keys_and_users_each_count_their_own(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys, clickhouse_url: str
) -> None:
    sent = {"default": project_events(3), "other": project_events(5)}
    async with make_client(clickhouse_url=clickhouse_url, replication_interval_ms=20) as client:
        for name, project in (("default", keys.default), ("other", keys.other)):
            response = await client.post("/events", json=sent[name], headers=project.auth())
            assert response.json()["accepted"] == 120, response.text
        assert await counts(db) == {"default": 120, "other": 120}
        services = client.app.state.services
        await wait_until(lambda: services.replicator.rows_copied == 240, what="replication")
        window = {"from": "2026-10-30T00:00:00Z", "to": "2026-11-08T00:00:00Z"}
        engines = [{"plan": "raw"}, {"plan": "rollup"}, {"backend": "clickhouse"}]
        for granularity in ("hour", "day", "week", "month", "total"):
            for group_by in ((), ("channel",), ("event_name",), ("channel", "event_name")):
                params = {**window, "granularity": granularity, "group_by": ",".join(group_by)}
                for name, project in (("default", keys.default), ("other", keys.other)):
                    answers = []
                    for engine in engines:
                        response = await client.get(
                            "/metrics", params={**params, **engine}, headers=project.auth("read")
                        )
                        assert response.status_code == 200, response.text
                        body = response.json()
                        body.pop("backend")
                        body.pop("freshness")
                        answers.append(body)
                    assert answers[0] == answers[1] == answers[2], (name, params)
                    users = {e["user_id"] for e in sent[name]}
                    assert answers[0]["total"] == {"events": 120, "unique_users": len(users)}
                    if granularity == "day":
                        got = {
                            (row["bucket_start"][:10], *(row[d] for d in group_by)): (
                                row["events"], row["unique_users"])
                            for row in answers[0]["series"]
                        }  # fmt: skip
                        assert got == oracle(sent[name], group_by), (name, group_by)


# --- rate limit ---------------------------------------------------------------------------


async def test_a_project_over_its_rate_limit_gets_429_and_stores_nothing(
    make_client: ClientFactory, db: asyncpg.Connection, keys: Keys
) -> None:
    async with make_client(rate_limit_events_per_s=10) as client:
        first = await client.post("/events", json=[event(f"a{n}") for n in range(12)])
        assert first.status_code == 200  # a full bucket admits a request that overdraws it
        refused = await client.post("/events", json=[event("b")])
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        other = await client.post("/events", json=[event("c")], headers=keys.other.auth())
        assert other.status_code == 200  # limits are per project
    assert await counts(db) == {"default": 12, "other": 1}


# --- CORS -------------------------------------------------------------------------------


async def test_cors_lets_any_origin_send_events_but_no_origin_read_by_default(
    make_client: ClientFactory, keys: Keys
) -> None:
    origin = {"Origin": "https://shop.example"}
    async with make_client() as client:
        preflight = await client.options(
            "/events",
            headers={**origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )  # fmt: skip
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        posted = await client.post("/events", json=event("x"), headers=origin)
        assert posted.headers["access-control-allow-origin"] == "*"
        read_preflight = await client.options(
            "/metrics", headers={**origin, "Access-Control-Request-Method": "GET"}
        )
        assert read_preflight.status_code == 403
        read = await client.get("/metrics", params=WINDOW, headers=origin)
        assert read.status_code == 200
        assert "access-control-allow-origin" not in read.headers


async def test_cors_read_origins_are_configurable(make_client: ClientFactory) -> None:
    async with make_client(
        cors_read_origins="https://dash.example", cors_ingest_origins="https://shop.example"
    ) as client:
        allowed = await client.get(
            "/metrics", params=WINDOW, headers={"Origin": "https://dash.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
        assert allowed.headers["vary"] == "Origin"
        elsewhere = await client.options(
            "/events",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert elsewhere.status_code == 403


async def test_openapi_declares_the_security_of_each_route(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert {"writeKey", "writeKeyBasic", "readKey", "readKeyBasic"} <= set(schemes)
    assert schema["paths"]["/events"]["post"]["security"] == [
        {"writeKey": []}, {"writeKeyBasic": []}
    ]  # fmt: skip
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"readKey": []}, {"readKeyBasic": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


# --- the command line ------------------------------------------------------------------------


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVENT_METRICS_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_projects_and_keys_from_the_command_line(database_url: str) -> None:
    name = f"shop-{time.monotonic_ns() % 10**8}"
    created = cli(database_url, "projects", "create", name, "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["project"] == name
    assert made["write_key"].startswith("emw_") and made["read_key"].startswith("emr_")
    assert len(made["write_key"]) >= 4 + 32  # at least 128 random bits after the marker
    SECRETS.update((made["write_key"], made["read_key"]))

    again = cli(database_url, "projects", "create", name)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    listed = json.loads(cli(database_url, "projects", "list", "--json").stdout)
    assert {"name": name, "write_keys": 1, "read_keys": 1}.items() <= next(
        p for p in listed if p["name"] == name
    ).items()

    key = json.loads(
        cli(database_url, "keys", "create", "--project", name, "--scope", "read", "--json").stdout
    )
    assert (key["project"], key["scope"]) == (name, "read")
    assert key["key"].startswith(key["prefix"]) and len(key["prefix"]) == 12
    SECRETS.add(key["key"])

    keys_out = cli(database_url, "keys", "list", "--project", name, "--json")
    keys_list = json.loads(keys_out.stdout)
    assert len(keys_list) == 3 and all(k["revoked_at"] is None for k in keys_list)
    for secret in SECRETS:
        assert secret not in keys_out.stdout  # prefixes only, never secrets

    revoked = cli(database_url, "keys", "revoke", key["prefix"])
    assert revoked.returncode == 0, revoked.stderr
    after = json.loads(cli(database_url, "keys", "list", "--project", name, "--json").stdout)
    assert [k["prefix"] for k in after if k["revoked_at"]] == [key["prefix"]]
    assert cli(database_url, "keys", "revoke", key["prefix"]).returncode == 1
    assert cli(database_url, "keys", "list", "--project", "nope").returncode == 1
    bad = cli(database_url, "keys", "create", "--project", name, "--scope", "admin")
    assert bad.returncode == 2  # argparse refuses the scope


def keys_in(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_serve_on_the_embedded_postgres_gives_default_keys_once(embedded_data_dir: Path) -> None:
    """`serve` without a database URL starts the embedded PostgreSQL and answers /health; the
    first start gives the project 'default' two keys, a later one none, and every stop stops
    PostgreSQL, even after a process died without saying so."""
    pgdata = embedded_data_dir / "postgres"
    keys_file = embedded_data_dir / "default-project.env"
    server = LiveServer("", data_dir=str(embedded_data_dir))
    try:
        # initdb and the first migrations take 20-30 s on a loaded machine of 2 cores.
        server.start(timeout_s=120)
        values = keys_in(keys_file)
        SECRETS.update(values.values())
        sent = httpx.post(f"{server.url}/events", json=[event("embedded")],
                          headers={"Authorization": f"Bearer {values['WRITE_KEY']}"})  # fmt: skip
        assert sent.status_code == 200, sent.text
    finally:
        first = server.stop()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert values["WRITE_KEY"] in first and values["READ_KEY"] in first, first
    assert "Traceback" not in first and "initdb" not in first, first  # embedded_postgres is quiet
    assert not (pgdata / "postmaster.pid").exists(), "PostgreSQL still runs after serve stopped"

    # A process killed while using the server leaves its pid in .handle_pids.json; without
    # dropping it, no later process would be the last one and stop PostgreSQL.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead.pid]))
    server = LiveServer("", data_dir=str(embedded_data_dir))
    try:
        server.start(timeout_s=120)
    finally:
        second = server.stop()
    assert "Traceback" not in second and values["WRITE_KEY"] not in second, second
    assert keys_in(keys_file) == values
    assert not (pgdata / "postmaster.pid").exists(), "a dead pid kept PostgreSQL running"


# --- revocation under load, in every process ---------------------------------------------------


async def test_revocation_takes_effect_in_every_process_within_2_s(
    database_url: str, db: asyncpg.Connection
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        key = await projects.create_key(connection, "default", "write")
    finally:
        await connection.close()
    SECRETS.add(key.key)
    results: list[tuple[float, float, int]] = []  # (sent, answered, status)
    with live_server(database_url, http_workers="2", key_refresh_ms="1000") as server:
        stop = asyncio.Event()
        revoked_at = 0.0

        async def sender(n: int) -> None:
            # A new connection per request, so both worker processes are reached.
            i = 0
            while not stop.is_set():
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    sent = time.monotonic()
                    response = await client.post(
                        "/events", json=event(f"r{n}-{i}"),
                        headers={"Authorization": f"Bearer {key.key}"},
                    )  # fmt: skip
                    results.append((sent, time.monotonic(), response.status_code))
                i += 1

        senders = [asyncio.create_task(sender(n)) for n in range(8)]
        await wait_until(lambda: len(results) > 50, what="load")
        revoker = await asyncpg.connect(database_url)
        try:
            revoked_at = time.monotonic()
            await projects.revoke_key(revoker, key.prefix)
        finally:
            await revoker.close()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*senders)
    assert {status for _, _, status in results} <= {200, 401}
    finished_before = [s for sent, answered, s in results if answered < revoked_at]
    assert finished_before and set(finished_before) == {200}
    late = [s for sent, _, s in results if sent > revoked_at + 2.0]
    assert late and set(late) == {401}, "a revoked key was still accepted after 2 s"
    accepted = sum(1 for *_, s in results if s == 200)
    assert await db.fetchval("SELECT count(*) FROM events") == accepted


# --- keys never appear in logs -----------------------------------------------------------------


async def test_keys_never_appear_in_logs(
    make_client: ClientFactory, keys: Keys, revoked: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    every = {keys.default.write, keys.default.read, keys.other.write, keys.other.read, revoked,
             *SECRETS}  # fmt: skip
    async with make_client() as client:
        client.auth = None
        for secret in every:
            for path in ("/events", "/metrics"):
                for header in (f"Bearer {secret}", basic(secret), basic(secret, "x")):
                    if path == "/events":
                        await client.post(path, json=event("z"), headers={"Authorization": header})
                    else:
                        await client.get(path, params=WINDOW, headers={"Authorization": header})
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records)
    assert caplog.records, "nothing was logged at all: the check would prove nothing"
    leaked = [secret[:12] for secret in every if secret in logged]
    assert not leaked, f"keys found in the log: {leaked}"
