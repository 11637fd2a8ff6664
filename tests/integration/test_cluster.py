"""The mirror on a 2-shard ClickHouse 18.16 cluster answers exactly what one node and
PostgreSQL answer, keeps every user on one shard, and survives a shard going away.

Two throwaway servers define the same `remote_servers` clusters; the service is given the
first as its node and the cluster's name, and creates every table itself. Rows are
compared by key and content checksum (verify's canonical text), shard by shard.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from clickhouse_driver import Client
from test_backends import QUERIES, generate_events, series_difference
from throwaway.clickhouse import ClickHouseServer, find_binary, start_cluster

from conftest import ClientFactory, Keys, unavailable, wait_until
from event_metrics import clickhouse_cluster, metrics_clickhouse, verify
from event_metrics.clickhouse_cluster import LOCAL_TABLE, ClusterError, prepare
from event_metrics.metrics import MetricsQuery
from event_metrics.replicator import MIRRORED, Replicator
from event_metrics.schema import MIRRORED_COLUMNS
from event_metrics.settings import Settings

CLUSTER = "events_cluster"
WEIGHTED = "weighted"  # the same two servers, weights 2 and 1
WINDOW = {"from": "2026-10-24T00:00:00Z", "to": "2026-11-09T00:00:00Z"}

PG_CONTENT = f"SELECT project_id, idempotency_key, md5({verify.POSTGRES_CONTENT}) FROM events"
CH_CONTENT = (
    f"SELECT project_id, idempotency_key, lower(hex(MD5({verify.CLICKHOUSE_CONTENT}))) "
    f"FROM {LOCAL_TABLE} FINAL"
)
Content = dict[tuple[int, str], str]  # (project, key) -> md5 of the row's canonical text


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ClickHouseServer]]:
    if find_binary() is None:
        unavailable("clickhouse-server is not installed (make test installs it on Debian)")
    servers = start_cluster(tmp_path_factory.mktemp("cluster"), {CLUSTER: [1, 1], WEIGHTED: [2, 1]})
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@dataclass
class ClusterDatabase:
    """One database of the same name on every shard; the service talks to the first."""

    servers: list[ClickHouseServer]
    name: str

    def node_url(self, number: int) -> str:
        server = self.servers[number - 1]
        return f"clickhouse://default@{server.host}:{server.port}/{self.name}"

    @property
    def url(self) -> str:
        return self.node_url(1)

    def execute(self, number: int, sql: str, *args: Any, **kwargs: Any) -> Any:
        client = Client.from_url(self.node_url(number))
        try:
            return client.execute(sql, *args, **kwargs)
        finally:
            client.disconnect()

    def shard_contents(self) -> list[Content]:
        """Each shard's rows, one version per key (FINAL), by key and checksum."""
        return [
            {(project, key): content for project, key, content in self.execute(n, CH_CONTENT)}
            if self.execute(n, f"EXISTS TABLE {LOCAL_TABLE}")[0][0]
            else {}
            for n in (1, 2)
        ]

    def users(self, number: int) -> set[tuple[int, str]]:
        rows = self.execute(number, f"SELECT DISTINCT project_id, user_id FROM {LOCAL_TABLE}")
        return set(rows)


@pytest.fixture
def cluster_db(shards: list[ClickHouseServer]) -> Iterator[ClusterDatabase]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    for server in shards:
        server.start()  # a test that stopped a shard may have failed before restarting it
        admin = Client.from_url(server.url)
        admin.execute(f"CREATE DATABASE {name}")
        admin.disconnect()
    try:
        yield ClusterDatabase(shards, name)
    finally:
        for server in shards:
            if server.is_running():
                admin = Client.from_url(server.url)
                admin.execute(f"DROP DATABASE IF EXISTS {name}")
                admin.disconnect()


async def postgres_contents(db: asyncpg.Connection) -> Content:
    return {(project, key): content for project, key, content in await db.fetch(PG_CONTENT)}


async def converged(db: asyncpg.Connection, cluster: ClusterDatabase) -> bool:
    """Every PostgreSQL row on exactly one shard, with its content; nothing else."""
    first, second = cluster.shard_contents()
    return not first.keys() & second.keys() and first | second == await postgres_contents(db)


def assert_placed_by_user(cluster: ClusterDatabase) -> None:
    """Both shards hold rows, and no (project, user) is on both."""
    first, second = cluster.users(1), cluster.users(2)
    assert first and second, "one shard holds every user"
    assert not first & second, f"users on two shards: {sorted(first & second)[:5]}"


async def post(client: Any, events: list[dict[str, Any]], headers: dict[str, str]) -> None:
    for start in range(0, len(events), 250):
        response = await client.post("/events", json=events[start : start + 250], headers=headers)
        assert response.status_code == 200, response.text


async def answers(client: Any, backend: str, project: dict[str, str]) -> dict[str, Any]:
    """Every query shape's answer from one backend, for one project's read key."""
    found = {}
    for params in QUERIES:
        response = await client.get(
            "/metrics", params={**WINDOW, **params, "backend": backend}, headers=project
        )
        assert response.status_code == 200, (params, response.text)
        body = response.json()
        assert body.pop("backend") == backend
        body.pop("freshness")
        found[json.dumps(params, sort_keys=True)] = body
    return found


def assert_same(left: dict[str, Any], right: dict[str, Any], what: str) -> None:
    for params, answer in left.items():
        assert answer == right[params], (what, params, series_difference(answer, right[params]))


async def test_the_cluster_answers_like_one_node_and_postgres(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    keys: Keys,
    settings: Settings,
    cluster_db: ClusterDatabase,
    clickhouse_url: str,
) -> None:
    # Two projects with the same user ids (the sharding key includes the project), client
    # retries and late events shuffled in, over the 2026-11-01 DST change.
    default_events = generate_events(seed=24, count=1200)
    other_events = generate_events(seed=25, count=600)
    projects = {"default": keys.default, "other": keys.other}
    async with make_client(
        clickhouse_url=cluster_db.url,
        clickhouse_cluster=CLUSTER,
        replication_interval_ms=50,
        replication_batch_rows=400,
    ) as client:
        await post(client, default_events, keys.default.auth("write"))
        await post(client, other_events, keys.other.auth("write"))
        await wait_until(lambda: converged(db, cluster_db), what="replication to both shards")
        assert (await client.get("/health")).json()["replication"]["state"] == "running"
        on_cluster = {
            name: await answers(client, "clickhouse", project.auth("read"))
            for name, project in projects.items()
        }
        on_postgres = {
            name: await answers(client, "postgres", project.auth("read"))
            for name, project in projects.items()
        }
    assert_placed_by_user(cluster_db)

    # The same rows on one node: the replicator copies them again from the start.
    await db.execute("DELETE FROM replication_state WHERE target = 'clickhouse'")
    assert settings.database_url is not None
    await copy_everything(
        Replicator(settings.database_url, clickhouse_url, settings.replication),
        await db.fetchval("SELECT count(*) FROM events"),
    )
    async with make_client(clickhouse_url=clickhouse_url, replicate=False) as client:
        on_one_node = {
            name: await answers(client, "clickhouse", project.auth("read"))
            for name, project in projects.items()
        }
    for name in projects:
        assert_same(on_cluster[name], on_postgres[name], f"cluster vs postgres, {name}")
        assert_same(on_cluster[name], on_one_node[name], f"cluster vs one node, {name}")
        totals = [body["total"]["events"] for body in on_cluster[name].values()]
        assert min(totals) > 0

    # Any node can be the entry: the second shard answers the same through its own table.
    for query in _shapes(keys.default.project_id):
        for sql, params in metrics_clickhouse.build_sql(query):
            first = sorted(cluster_db.execute(1, sql, params))
            assert first == sorted(cluster_db.execute(2, sql, params)), sql
    report, _ = await verify.run(settings.database_url, cluster_db.url, fix=False, cluster=CLUSTER)
    assert report.differences == [] and report.cells > 0


def _shapes(project_id: int) -> list[MetricsQuery]:
    return [
        MetricsQuery(
            project_id=project_id,
            start=datetime(2026, 10, 24, tzinfo=UTC),
            end=datetime(2026, 11, 9, tzinfo=UTC),
            event_name=None,
            granularity=granularity,  # type: ignore[arg-type]
            group_by=group_by,  # type: ignore[arg-type]
            timezone="America/New_York",
        )
        for granularity, group_by in itertools.product(
            ("hour", "total"), ((), ("channel", "event_name"))
        )
    ]


def events_of(prefix: str, count: int, users: int = 40) -> list[dict[str, Any]]:
    return [
        {"event_name": "e", "user_id": f"u{n % users}", "idempotency_key": f"{prefix}-{n}",
         "timestamp": f"2026-11-0{1 + n % 5}T1{n % 10}:00:00Z"}
        for n in range(count)
    ]  # fmt: skip


async def test_a_shard_down_fails_the_mirror_and_it_converges_when_back(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    settings: Settings,
    cluster_db: ClusterDatabase,
) -> None:
    second = cluster_db.servers[1]
    async with make_client(
        clickhouse_url=cluster_db.url,
        clickhouse_cluster=CLUSTER,
        replication_interval_ms=20,
        replication_retry_max_ms=200,
    ) as client:

        async def replication() -> dict[str, Any]:
            part: dict[str, Any] = (await client.get("/health")).json()["replication"]
            return part

        write = {}  # the default project's keys (the client's own)
        await post(client, events_of("before", 200), write)
        await wait_until(lambda: converged(db, cluster_db), what="first copy")
        second.stop()
        await post(client, events_of("during", 300), write)  # ingest needs no ClickHouse

        async def failing() -> bool:
            part = await replication()
            return bool(part["state"] == "failing" and part["lag_rows"] == 300)

        await wait_until(failing, what="the mirror failing, 300 rows behind")
        part = await replication()
        assert f"127.0.0.1:{second.port}" in part["last_error"], part["last_error"]
        # No block was acknowledged while a shard was missing: the checkpoint stayed at the
        # last row copied before.
        assert await db.fetchval(
            "SELECT last_id FROM replication_state WHERE target = 'clickhouse'"
        ) == await db.fetchval("SELECT max(id) FROM events WHERE idempotency_key LIKE 'before-%'")
        metrics = await client.get("/metrics", params={**WINDOW, "backend": "clickhouse"})
        assert metrics.status_code == 503, metrics.text
        assert "shard" in metrics.json()["detail"]

        second.start()
        await post(client, events_of("after", 100), write)
        await wait_until(lambda: converged(db, cluster_db), what="convergence", timeout_s=60)

        async def running() -> bool:
            return bool((await replication())["state"] == "running")

        await wait_until(running, what="the mirror running again")
    assert len(await postgres_contents(db)) == 600
    assert_placed_by_user(cluster_db)
    # Every key once through the Distributed table as well: nothing lost, nothing doubled.
    rows = cluster_db.execute(1, "SELECT count(), uniqExact(idempotency_key) FROM events FINAL")
    assert rows == [(600, 600)]

    # Every block sent again (a checkpoint lost): each repeat lands on its original's shard.
    for n in (1, 2):
        cluster_db.execute(n, f"SYSTEM STOP MERGES {LOCAL_TABLE}")
    await db.execute("DELETE FROM replication_state WHERE target = 'clickhouse'")
    assert settings.database_url is not None
    replicator = Replicator(
        settings.database_url, cluster_db.url, settings.replication, cluster=CLUSTER
    )
    await copy_everything(replicator, 600)
    held = sum(cluster_db.execute(n, f"SELECT count() FROM {LOCAL_TABLE}")[0][0] for n in (1, 2))
    assert held >= 1200, "the repeats are there, unmerged"
    assert await converged(db, cluster_db)
    assert_placed_by_user(cluster_db)


def run_cli(
    *args: str, database_url: str, cluster: ClusterDatabase
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVENT_METRICS_DATABASE_URL": database_url,
           "EVENT_METRICS_CLICKHOUSE_URL": cluster.url,
           "EVENT_METRICS_CLICKHOUSE_CLUSTER": CLUSTER}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def shard_of(cluster: ClusterDatabase, key: str) -> int:
    holders = [n for n in (1, 2) if any(k == key for _, k in cluster.shard_contents()[n - 1])]
    assert len(holders) == 1, (key, holders)
    return holders[0]


async def test_verify_and_repair_on_the_cluster(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    cluster_db: ClusterDatabase,
    database_url: str,
) -> None:
    events = [
        {"event_name": name, "user_id": f"u{n}", "idempotency_key": f"{name}-{n}",
         "timestamp": f"2026-0{1 + n % 3}-1{n % 9}T10:00:00Z"}
        for n in range(40) for name in ("view", "buy")
    ]  # fmt: skip
    async with make_client(
        clickhouse_url=cluster_db.url, clickhouse_cluster=CLUSTER, replication_interval_ms=20
    ) as client:
        assert (await client.post("/events", json=events)).status_code == 200
        await wait_until(lambda: converged(db, cluster_db), what="copy")
    clean = run_cli("verify", "--json", database_url=database_url, cluster=cluster_db)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["differences"] == []

    columns = f"({', '.join(MIRRORED_COLUMNS)})"
    insert = f"INSERT INTO {LOCAL_TABLE} {columns} VALUES"

    async def row(key: str) -> list[Any]:
        found = await db.fetchrow(f"SELECT {MIRRORED} FROM events WHERE idempotency_key = $1", key)
        assert found is not None
        return list(found)

    # A row moved to the other shard reads right, but counts its user (u5, who also has
    # buy-5) on both shards: the answers are sums of per-shard counts.
    home = shard_of(cluster_db, "view-5")
    cluster_db.execute(home, f"ALTER TABLE {LOCAL_TABLE} DELETE WHERE idempotency_key = 'view-5'")
    await wait_until(lambda: shard_of_or_none(cluster_db, "view-5") is None, what="delete")
    cluster_db.execute(3 - home, insert, [await row("view-5")])
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    async with make_client(
        clickhouse_url=cluster_db.url, clickhouse_cluster=CLUSTER, replicate=False
    ) as client:
        wrong = (await client.get("/metrics", params={**params, "backend": "clickhouse"})).json()
        right = (await client.get("/metrics", params={**params, "backend": "postgres"})).json()
    assert wrong["total"]["events"] == right["total"]["events"] == 80
    assert wrong["total"]["unique_users"] == right["total"]["unique_users"] + 1 == 41

    # A row copied to the second shard too, one deleted, one PostgreSQL never had.
    cluster_db.execute(3 - shard_of(cluster_db, "view-3"), insert, [await row("view-3")])
    buy_home = shard_of(cluster_db, "buy-7")
    cluster_db.execute(
        buy_home, f"ALTER TABLE {LOCAL_TABLE} DELETE WHERE idempotency_key = 'buy-7'"
    )
    await wait_until(lambda: shard_of_or_none(cluster_db, "buy-7") is None, what="delete")
    ghost = [*(await row("view-1"))]
    ghost[MIRRORED_COLUMNS.index("idempotency_key")] = "ghost"
    ghost[MIRRORED_COLUMNS.index("id")] = 999
    cluster_db.execute(1, f"INSERT INTO events {columns} VALUES", [ghost],
                       settings={"insert_distributed_sync": 1})  # fmt: skip

    broken = run_cli("verify", "--json", database_url=database_url, cluster=cluster_db)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    found = json.loads(broken.stdout)["differences"]
    by_kind = {kind: sum(d[kind] for d in found) for kind in ("missing", "extra", "changed")}
    assert by_kind == {"missing": 1, "extra": 1, "changed": 2}, found

    fixed = run_cli("verify", "--repair", database_url=database_url, cluster=cluster_db)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "0 cells still differ" in fixed.stdout
    assert await converged(db, cluster_db)
    assert_placed_by_user(cluster_db)


def shard_of_or_none(cluster: ClusterDatabase, key: str) -> int | None:
    holders = [n for n in (1, 2) if any(k == key for _, k in cluster.shard_contents()[n - 1])]
    return holders[0] if holders else None


def test_the_layout_decides_the_shard_as_the_distributed_table_does(
    cluster_db: ClusterDatabase,
) -> None:
    """placement_sql (what verify checks rows against) agrees with the engine's choice,
    equal weights and unequal."""
    for cluster, layout in ((CLUSTER, ((1, 1), (2, 1))), (WEIGHTED, ((1, 2), (2, 1)))):
        cluster_db.execute(1, "DROP TABLE IF EXISTS events")
        for n in (1, 2):
            cluster_db.execute(n, f"DROP TABLE IF EXISTS {LOCAL_TABLE}")
            cluster_db.execute(n, "DROP TABLE IF EXISTS shard_layout")
        client = Client.from_url(cluster_db.url)
        try:
            nodes = prepare(client, cluster_db.url, cluster)
        finally:
            client.disconnect()
        assert clickhouse_cluster.layout_of(nodes) == layout
        rows = [(n, 1, f"k{n}", "e", f"user-{n}", "", 1790000000, 1790000000, "")
                for n in range(3000)]  # fmt: skip
        cluster_db.execute(
            1, f"INSERT INTO events ({', '.join(MIRRORED_COLUMNS)}) VALUES", rows,
            settings={"insert_distributed_sync": 1},
        )  # fmt: skip
        placement = clickhouse_cluster.placement_sql(layout)
        held = [cluster_db.execute(n, f"SELECT count() FROM {LOCAL_TABLE}")[0][0] for n in (1, 2)]
        assert sum(held) == 3000 and min(held) > 0
        if cluster == WEIGHTED:
            assert held[0] > 1.6 * held[1], held  # weights 2:1
        for n in (1, 2):
            assert cluster_db.execute(
                n, f"SELECT count() FROM {LOCAL_TABLE} WHERE {placement} != {n}"
            ) == [(0,)]
        for table in ("events", LOCAL_TABLE, "shard_layout", "schema_version"):
            for n in (1, 2):
                cluster_db.execute(n, f"DROP TABLE IF EXISTS {table}")


def test_the_sharding_hash_is_pinned(cluster_db: ClusterDatabase) -> None:
    """A user must stay on its shard across ClickHouse upgrades: cityHash64 of (project,
    user) gives this value on 18.16 and on 26.9 (chdb)."""
    assert cluster_db.execute(1, "SELECT cityHash64(toUInt32(7), 'user-1')") == [
        (6264687412491602465,)
    ]


def test_a_cluster_that_cannot_hold_the_mirror_is_refused(cluster_db: ClusterDatabase) -> None:
    def prepared(url: str, cluster: str | None) -> list[clickhouse_cluster.Node]:
        client = Client.from_url(url)
        try:
            return prepare(client, url, cluster)
        finally:
            client.disconnect()

    with pytest.raises(ClusterError, match="'nowhere' is not in the remote_servers"):
        prepared(cluster_db.url, "nowhere")

    # A single-node mirror on a node: its rows are not placed by the sharding key.
    single = Client.from_url(cluster_db.node_url(2))
    prepare(single, cluster_db.node_url(2), None)
    single.disconnect()
    with pytest.raises(ClusterError, match="single-node events table"):
        prepared(cluster_db.url, CLUSTER)
    cluster_db.execute(2, "DROP TABLE events")

    nodes = prepared(cluster_db.url, CLUSTER)
    assert [(node.shard, node.port) for node in nodes] == [
        (1, cluster_db.servers[0].port), (2, cluster_db.servers[1].port)
    ]  # fmt: skip
    # The cluster's table, read as a single node's, is refused rather than half-used.
    with pytest.raises(ClusterError, match="EVENT_METRICS_CLICKHOUSE_CLUSTER"):
        prepared(cluster_db.url, None)

    # Rows placed over two shards, and a layout that now says three: refused.
    cluster_db.execute(
        1, f"INSERT INTO events ({', '.join(MIRRORED_COLUMNS)}) VALUES",
        [(1, 1, "k", "e", "u", "", 1790000000, 1790000000, "")],
        settings={"insert_distributed_sync": 1},
    )  # fmt: skip
    holder = 1 if cluster_db.execute(1, f"SELECT count() FROM {LOCAL_TABLE}")[0][0] else 2
    cluster_db.execute(holder, "DROP TABLE shard_layout")
    cluster_db.execute(holder, clickhouse_cluster.CREATE_LAYOUT)
    cluster_db.execute(
        holder, "INSERT INTO shard_layout VALUES", [(1, 1), (2, 1), (3, 1)]
    )  # fmt: skip
    with pytest.raises(ClusterError, match="counted on two shards"):
        prepared(cluster_db.url, CLUSTER)


async def test_the_replicator_shows_a_cluster_it_cannot_use(
    settings: Settings, cluster_db: ClusterDatabase
) -> None:
    assert settings.database_url is not None
    replicator = Replicator(
        settings.database_url,
        cluster_db.url,
        settings.updated(replication_retry_max_ms=100).replication,
        cluster="nowhere",
    )
    task = asyncio.create_task(replicator.run())
    try:
        await wait_until(lambda: replicator.state == "failing", what="failing")
        assert "'nowhere' is not in the remote_servers" in (replicator.last_error or "")
    finally:
        replicator.stop()
        await task


async def test_a_single_node_mirror_moves_to_the_cluster_by_the_documented_rebuild(
    settings: Settings, db: asyncpg.Connection, cluster_db: ClusterDatabase
) -> None:
    """docs/operations.md, 'Moving the mirror to a cluster', step by step."""
    assert settings.database_url is not None
    await db.executemany(
        "INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts, "
        "received_at) VALUES (1, $1, 'e', $2, '', now(), now())",
        [(f"k-{n}", f"u{n % 30}") for n in range(300)],
    )
    # The mirror on one node, which is then made a shard of the cluster.
    single = Replicator(settings.database_url, cluster_db.url, settings.replication)
    await copy_everything(single)
    on_cluster = Replicator(
        settings.database_url, cluster_db.url, settings.replication, cluster=CLUSTER
    )
    with pytest.raises(ClusterError, match="Moving the mirror to a cluster"):
        await on_cluster.run_once()

    cluster_db.execute(1, "RENAME TABLE events TO events_single")
    await db.execute("DELETE FROM replication_state WHERE target = 'clickhouse'")
    await copy_everything(on_cluster)
    assert await converged(db, cluster_db)
    assert_placed_by_user(cluster_db)
    report, _ = await verify.run(settings.database_url, cluster_db.url, fix=False, cluster=CLUSTER)
    assert report.differences == []
    assert cluster_db.execute(1, "SELECT count() FROM events_single") == [(300,)]


async def copy_everything(replicator: Replicator, rows: int = 300) -> None:
    """Run the replicator until it has copied `rows`: polled, because any transaction
    open elsewhere on the PostgreSQL cluster holds the horizon back."""
    copied = 0

    async def done() -> bool:
        nonlocal copied
        copied += await replicator.run_once()
        return copied == rows

    await wait_until(done, what=f"{rows} rows copied")
