"""An export re-imported into an empty project answers exactly like the original: on
both engines and both PostgreSQL plans, every granularity and grouping, in three time
zones across DST changes; the keys and what they hold are the same in both projects and
in ClickHouse; and rollups over the past buckets an import touches are exactly what a
computation from scratch gives."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from clickhouse_driver import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from pyroaring import BitMap
from test_import import import_file
from test_rollups import fold_all, parked  # noqa: F401 - a fixture

from conftest import SECRETS, ClientFactory, Keys, ProjectKeys, wait_until
from event_metrics import projects
from event_metrics.schema import DAY, DIMENSIONS, HOUR, LEVELS

START = datetime(2026, 10, 20, tzinfo=UTC)
END = datetime(2026, 11, 6, tzinfo=UTC)
# Europe/Berlin leaves summer time on 2026-10-25, America/New_York on 2026-11-01.
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata"]
QUERIES = [
    {"granularity": g, "group_by": by, "timezone": tz}
    for g, by, tz in itertools.product(
        ["hour", "day", "week", "month", "total"],
        ["", "channel", "event_name", "channel,event_name"],
        ZONES,
    )
]
WINDOW = {"from": "2026-10-19T22:00:00Z", "to": "2026-11-06T00:00:00Z"}
# PostgreSQL through the raw table and through the rollups, and ClickHouse.
ENGINES = [{"backend": "postgres", "plan": "raw"}, {"backend": "postgres", "plan": "rollup"},
           {"backend": "clickhouse"}]  # fmt: skip
CHECKSUM = """
SELECT count(*), md5(string_agg(concat_ws('|', idempotency_key, event_name, user_id, channel,
       ts, properties::text), ',' ORDER BY idempotency_key))
FROM events WHERE project_id = $1
"""

moments = st.datetimes(
    min_value=START.replace(tzinfo=None), max_value=END.replace(tzinfo=None),
    timezones=st.sampled_from([UTC, *map(ZoneInfo, ZONES)]),
)  # fmt: skip
properties = st.dictionaries(
    st.sampled_from(["a", "b", "long key", "é"]),
    st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False),
              st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                      max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)),
    max_size=4,
)  # fmt: skip
events = st.lists(
    st.fixed_dictionaries(
        {
            "event_name": st.sampled_from(["view", "buy", "sign up"]),
            "user_id": st.sampled_from([f"u{n}" for n in range(15)]),
            "timestamp": moments.map(lambda m: m.isoformat()),
        },
        optional={
            "channel": st.sampled_from(["web", "ios", ""]),
            # From a small pool: some events are retries of others.
            "idempotency_key": st.integers(0, 60).map(lambda n: f"key-{n}"),
            "properties": properties,
        },
    ),
    min_size=1,
    max_size=120,
)


async def new_project(database_url: str) -> ProjectKeys:
    connection = await asyncpg.connect(database_url)
    try:
        name = f"p-{uuid.uuid4().hex[:10]}"
        write, read = await projects.create_project(connection, name)
        project_id = await connection.fetchval("SELECT id FROM projects WHERE name = $1", name)
    finally:
        await connection.close()
    SECRETS.update((write.key, read.key))
    return ProjectKeys(name, project_id, write.key, read.key)


async def folded_and_mirrored(db: asyncpg.Connection, clickhouse_url: str) -> bool:
    """Every committed event is in the rollups and in ClickHouse."""
    pending = await db.fetchval(
        "SELECT count(*) FROM events e LEFT JOIN replication_state s ON s.target = 'rollups' "
        "WHERE s.target IS NULL OR (e.txid, e.id) > (s.txid, s.last_id)"
    )
    if pending:
        return False
    expected = await db.fetchval("SELECT count(*) FROM events")
    client = Client.from_url(clickhouse_url)
    try:
        exists = client.execute("EXISTS TABLE events")[0][0]
        mirrored = client.execute("SELECT count() FROM events FINAL")[0][0] if exists else -1
    finally:
        client.disconnect()
    return bool(mirrored == expected)


def clickhouse_keys(clickhouse_url: str, project_id: int) -> list[str]:
    client = Client.from_url(clickhouse_url)
    try:
        rows = client.execute(
            "SELECT idempotency_key FROM events FINAL WHERE project_id = %(p)s",
            {"p": project_id},
        )
    finally:
        client.disconnect()
    return sorted(row[0] for row in rows)


async def answer(client: AsyncTestClient[Any], project: ProjectKeys, params: dict[str, str]) -> Any:
    response = await client.get("/metrics", params=params, headers=project.auth("read"))
    assert response.status_code == 200, (params, response.text)
    body = response.json()
    body.pop("freshness")
    body.pop("backend")
    return body


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=events, split=st.integers(0, 120))
async def test_an_export_imported_into_an_empty_project_answers_the_same(
    make_client: ClientFactory, database_url: str, db: asyncpg.Connection,
    clickhouse_url: str, tmp_path: Path, sent: list[dict[str, Any]], split: int,
) -> None:  # fmt: skip
    original, copy = await new_project(database_url), await new_project(database_url)
    async with make_client(
        clickhouse_url=clickhouse_url, replication_interval_ms=50, rollup_interval_ms=50,
        export_page_rows=17,
    ) as client:  # fmt: skip
        # Ingest, let it fold, then ingest again: the later events are late for the
        # buckets already folded.
        for part in (sent[:split], sent[split:]):
            if part:
                response = await client.post("/events", json=part, headers=original.auth())
                assert response.status_code == 200, response.text
                await wait_until(lambda: folded_and_mirrored(db, clickhouse_url), what="folding")
        response = await client.get(
            "/export", headers={**original.auth("read"), "Accept-Encoding": "gzip"}
        )
        assert response.status_code == 200, response.text
        path = tmp_path / f"{original.project}.ndjson"
        path.write_bytes(response.content)
        report = await import_file(database_url, path, copy.project_id)
        assert report.rejected == 0 and report.stored == report.events
        await wait_until(lambda: folded_and_mirrored(db, clickhouse_url), what="the import")

        assert await db.fetchrow(CHECKSUM, copy.project_id) == await db.fetchrow(
            CHECKSUM, original.project_id
        )
        stored = await db.fetch(
            "SELECT idempotency_key FROM events WHERE project_id = $1 ORDER BY 1",
            copy.project_id,
        )
        assert clickhouse_keys(clickhouse_url, copy.project_id) == sorted(r[0] for r in stored)
        for query in QUERIES:
            first = None
            for engine in ENGINES:
                params = {**WINDOW, **query, **engine}
                expected = await answer(client, original, params)
                assert await answer(client, copy, params) == expected, params
                first = first or expected
                assert expected == first, params  # and every engine and plan agree
            assert first["total"]["events"] == len(stored)


# --- rollups over the past buckets an import touches --------------------------------------


async def rollups_from_scratch(db: asyncpg.Connection, project_id: int) -> dict[Any, Any]:
    """What the rollups must hold, computed here from the events themselves."""
    rows = await db.fetch(
        "SELECT e.ts, e.event_name, e.channel, u.uid FROM events e JOIN user_ids u "
        "ON u.project_id = e.project_id AND u.user_id = e.user_id WHERE e.project_id = $1",
        project_id,
    )
    out: dict[Any, list[Any]] = defaultdict(lambda: [0, set()])
    for ts, name, channel, uid in rows:
        values = {"event_name": name, "channel": channel}
        hour = ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
        for level in LEVELS:
            kept = tuple(values[d] if d in level.dimensions else "" for d in DIMENSIONS)
            for grain, bucket in ((HOUR, hour), (DAY, hour.replace(hour=0))):
                cell = out[(grain, level.number, bucket, *kept)]
                cell[0] += 1
                cell[1].add(uid)
    return {key: (events, sorted(users)) for key, (events, users) in out.items()}


async def rollups_stored(db: asyncpg.Connection, project_id: int) -> dict[Any, Any]:
    dims = ", ".join(DIMENSIONS)
    rows = await db.fetch(
        f"SELECT grain, level, bucket AT TIME ZONE 'UTC', {dims}, events, users_count, users "
        "FROM rollups WHERE project_id = $1",
        project_id,
    )
    out = {}
    for *key, events, count, users in rows:
        members = sorted(BitMap.deserialize(users))
        assert count == len(members)
        out[tuple(key)] = (events, members)
    return out


@pytest.mark.usefixtures("parked")
async def test_imported_past_events_make_their_buckets_exact(
    make_client: ClientFactory, database_url: str, db: asyncpg.Connection, keys: Keys,
    tmp_path: Path,
) -> None:  # fmt: skip
    project = keys.default.project_id
    now = datetime.now(UTC).replace(microsecond=0)
    live = [{"event_name": "view", "user_id": f"u{n % 9}", "channel": "web",
             "timestamp": (now - timedelta(days=30, minutes=7 * n)).isoformat()}
            for n in range(200)]  # fmt: skip
    async with make_client() as client:
        response = await client.post("/events", json=live)
        assert response.status_code == 200, response.text
    await fold_all(db)
    before = await rollups_stored(db, project)
    # A backfill into the same past hours and days (new users, new channels, one event
    # already stored), and into days nothing was stored in.
    past = [{"event_name": "view" if n % 2 else "buy", "user_id": f"w{n % 13}",
             "channel": ["web", "ios", ""][n % 3],
             "timestamp": (now - timedelta(days=30 + n % 3, minutes=5 * n)).isoformat()}
            for n in range(300)]  # fmt: skip
    path = tmp_path / "backfill.ndjson"
    path.write_text("".join(json.dumps(e) + "\n" for e in [*past, live[0]]))
    report = await import_file(database_url, path, project, batch_rows=64)
    assert (report.stored, report.duplicates) == (300, 1)
    await fold_all(db)
    after = await rollups_stored(db, project)
    assert after != before
    assert after == await rollups_from_scratch(db, project)
