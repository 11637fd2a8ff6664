"""Followers of the (txid, id) watermark across powers of ten of the transaction id.

A txid compared as text sorts '10000' before '9995'; these tests run on a cluster of their
own whose transaction ids are steered just below 10^4 and 10^5, and compare every row key
in PostgreSQL with what the followers produced, never only counts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from test_replication import clickhouse_keys, postgres_keys
from throwaway.postgres import PostgresCluster, running_cluster

from conftest import unavailable, wait_until
from event_metrics import rollups, verify
from event_metrics.migrations import upgrade_head
from event_metrics.replicator import Replicator
from event_metrics.settings import Settings

INSERT_ONE = """
INSERT INTO events (project_id, idempotency_key, event_name, user_id, channel, ts, received_at)
VALUES (1, $1, 'e', $2, '', now(), now())
"""
# Each iteration commits, so each consumes one transaction id.
BURN = """
DO $$
BEGIN
    WHILE pg_current_xact_id()::text::bigint < {target} LOOP
        COMMIT;
    END LOOP;
END $$
"""


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster per test: transaction ids are cluster-wide and only ever grow."""
    try:
        with running_cluster() as cluster:
            yield cluster
    except FileNotFoundError as exc:
        unavailable(str(exc))


@pytest.fixture
async def fresh_db(cluster: PostgresCluster) -> AsyncIterator[str]:
    """A migrated database on the private cluster; events emptied between tests."""
    admin = await asyncpg.connect(cluster.url)
    name = f"txids_{random.randrange(10**9)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await upgrade_head(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def burn_to(connection: asyncpg.Connection, target: int) -> None:
    """Consume transaction ids until the next one is at least `target`."""
    current = int(await connection.fetchval("SELECT pg_current_xact_id()::text"))
    if current >= target:
        pytest.skip(f"the private cluster is already at txid {current} > {target}")
    await connection.execute(BURN.format(target=target))


async def test_replicator_copies_every_row_across_txid_10000(
    fresh_db: str, clickhouse_url: str
) -> None:
    settings = Settings.build(replication_batch_rows=5)
    connection = await asyncpg.connect(fresh_db)
    try:
        await burn_to(connection, 9_980)
        for n in range(60):  # one transaction each: txids 9,980 ... 10,039
            await connection.execute(INSERT_ONE, f"k{n}", f"u{n}")
        await Replicator(fresh_db, clickhouse_url, settings.replication).run_once()
        assert clickhouse_keys(clickhouse_url) == await postgres_keys(connection)
    finally:
        await connection.close()


async def test_rollups_fold_every_row_across_txid_10000(fresh_db: str) -> None:
    connection = await asyncpg.connect(fresh_db)
    try:
        await burn_to(connection, 9_980)
        for n in range(60):
            await connection.execute(INSERT_ONE, f"k{n}", f"u{n % 7}")
        while await rollups.refresh_block(connection, max_rows=7):
            pass
        folded = await connection.fetchval(
            "SELECT sum(events) FROM rollups WHERE grain = 0 AND level = 3"
        )
        stored = await connection.fetchval("SELECT count(*) FROM events")
        assert (folded, stored) == (60, 60)
        # The checkpoint is the last row in (txid, id) order, not in text order.
        checkpoint = await connection.fetchrow(
            "SELECT txid, last_id FROM replication_state WHERE target = 'rollups'"
        )
        last = await connection.fetchrow("SELECT txid, id FROM events ORDER BY txid DESC, id DESC")
        assert tuple(checkpoint) == tuple(last)
    finally:
        await connection.close()


async def _writer(url: str, name: str, until: int, rng: random.Random) -> None:
    """Transactions of 1-20 rows that commit after a random pause, so commits land out of
    txid order across writers."""
    connection = await asyncpg.connect(url)
    try:
        n = 0
        while int(await connection.fetchval("SELECT pg_current_xact_id()::text")) < until:
            async with connection.transaction():
                for _ in range(rng.randint(1, 20)):
                    await connection.execute(INSERT_ONE, f"{name}-{n}", f"u{rng.randrange(50)}")
                    n += 1
                await asyncio.sleep(rng.random() * 0.01)
    finally:
        await connection.close()


@pytest.mark.parametrize("power", [10**4, 10**5])
async def test_followers_keep_every_row_under_concurrent_writers(
    fresh_db: str, clickhouse_url: str, power: int
) -> None:
    rng = random.Random(power)
    settings = Settings.build(replication_interval_ms=5, rollup_interval_ms=5)
    connection = await asyncpg.connect(fresh_db)
    try:
        await burn_to(connection, power - 150)
        replicators = []
        tasks = []
        for batch_rows in (1, 3, 7, 50):
            replicator = Replicator(
                fresh_db,
                clickhouse_url,
                settings.updated(replication_batch_rows=batch_rows).replication,
            )
            # One runs at a time (advisory lock); stop the active one now and then so
            # others with other block sizes take over mid-stream.
            replicators.append(replicator)
        tasks = [asyncio.create_task(r.run()) for r in replicators]
        refresher = rollups.RollupRefresher(
            fresh_db, settings.updated(rollup_block_rows=rng.choice([2, 5, 13])).rollups
        )
        tasks.append(asyncio.create_task(refresher.run()))
        writers = [
            asyncio.create_task(_writer(fresh_db, f"w{i}", power + 150, rng)) for i in range(4)
        ]
        for replicator in replicators[:-1]:
            await asyncio.sleep(0.05)
            replicator.stop_soon()  # the next one in line takes over from the checkpoint
        await asyncio.gather(*writers)
        expected = await postgres_keys(connection)
        await wait_until(
            lambda: clickhouse_keys(clickhouse_url) == expected,
            what="every key replicated",
        )

        async def folded() -> bool:
            total = await connection.fetchval(
                "SELECT coalesce(sum(events), 0) FROM rollups WHERE grain = 1 AND level = 3"
            )
            return bool(total == len(expected))

        await wait_until(folded, what="every row folded into the rollups")
        report, _ = await verify.run(fresh_db, clickhouse_url, fix=False)
        assert report.cells > 0 and report.differences == []
    finally:
        for replicator in replicators:
            replicator.stop_soon()
        refresher.stop_soon()
        await asyncio.gather(*tasks)
        await connection.close()
