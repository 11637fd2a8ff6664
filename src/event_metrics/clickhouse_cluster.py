"""The mirror on a ClickHouse cluster: a local events table on every node, and a
`Distributed` table named `events` over them on every node.

Operators define the cluster as ClickHouse is always configured: a `remote_servers` entry
in the servers' config. `EVENT_METRICS_CLICKHOUSE_CLUSTER` names it, and the service
reads its nodes from `system.clusters` on the node it talks to, connects to each with the
same user, password and database, and creates the tables there itself: no ZooKeeper or
Keeper, which `ON CLUSTER` DDL would need. Every node gets the Distributed table, so any
of them can be the entry node; reads, the replicator's inserts and verify go through it
unchanged, because it is called `events` like the single node's table.

Rows are placed by `cityHash64(project_id, user_id)`: a user of a project lives on one
shard, so unique users are the sum of each shard's exact count (metrics_clickhouse.py),
and a replayed row (same key, same user) lands on the shard that has the original.
cityHash64 rather than PostHog's sipHash64: it is the faster of the two on short strings,
and ClickHouse keeps both frozen across versions (18.16 and 26.9 give the same values,
tests/integration/test_cluster.py pins one). A keyed hash would not stop anyone from
crowding a shard: with N shards, one user id in N lands on a given shard whatever the hash.

The placement is a function of the shard layout (how many shards, their weights). Rows
copied under one layout are misplaced under another, and a user found on two shards is
counted twice; so each node records the layout its rows were placed by and the service
refuses to write under a different one (docs/operations.md says how to rebuild).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from clickhouse_driver import Client

from event_metrics.clickhouse import add_missing_columns, apply_schema, connect
from event_metrics.schema import CLICKHOUSE_TYPES, MIRRORED_COLUMNS

log = logging.getLogger(__name__)

TABLE = "events"  # the Distributed table, on every node
LOCAL_TABLE = "events_local"  # the rows themselves, on every node of the cluster
SHARDING_KEY = "cityHash64(project_id, user_id)"

NODES = """
SELECT shard_num, shard_weight, replica_num, host_name, port FROM system.clusters
WHERE cluster = %(cluster)s ORDER BY shard_num, replica_num
"""
TABLE_ENGINE = """
SELECT engine, engine_full FROM system.tables
WHERE database = currentDatabase() AND name = %(table)s
"""
CREATE_LAYOUT = """
CREATE TABLE IF NOT EXISTS shard_layout (shard_num UInt32, shard_weight UInt32)
ENGINE = TinyLog
"""
LOCAL_ROWS = f"SELECT count() FROM {LOCAL_TABLE}"
# Per (project, UTC day, event name) cell, the keys of rows a node holds that the layout
# places on another shard (verify repairs them as changed rows).
MISPLACED = f"""
SELECT project_id, toDate(ts) AS day, event_name, groupUniqArray(idempotency_key)
FROM {LOCAL_TABLE} WHERE {{placement}} != %(shard)s
GROUP BY project_id, day, event_name
"""

Layout = tuple[tuple[int, int], ...]  # (shard_num, weight) of every shard, in order
Cell = tuple[int, date, str]


class ClusterError(Exception):
    """The cluster cannot hold the mirror as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Node:
    """One server of the cluster: a replica of one shard."""

    shard: int
    weight: int
    replica: int
    host: str
    port: int

    def url(self, base_url: str) -> str:
        """`base_url` (the entry node's) with this node's host and port."""
        parts = urlsplit(base_url)
        credentials = parts.netloc.rpartition("@")[0]
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{credentials}@{host}:{self.port}" if credentials else f"{host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (shard {self.shard})"


class Store(NamedTuple):
    """A table that stores events on one server, with a client connected to it."""

    client: Any
    table: str
    node: Node | None  # None: the single node


def find_nodes(client: Client, cluster: str) -> list[Node]:
    return [Node(*row) for row in client.execute(NODES, {"cluster": cluster})]


def layout_of(nodes: list[Node]) -> Layout:
    return tuple(sorted({(node.shard, node.weight) for node in nodes}))


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def distributed_engine(cluster: str, database: str) -> str:
    return (
        f"Distributed({_literal(cluster)}, {_literal(database)}, {_literal(LOCAL_TABLE)}, "
        f"{SHARDING_KEY})"
    )


def distributed_ddl(cluster: str, database: str) -> str:
    columns = ", ".join(f"{name} {CLICKHOUSE_TYPES[name]}" for name in MIRRORED_COLUMNS)
    return f"CREATE TABLE {TABLE} ({columns}) ENGINE = {distributed_engine(cluster, database)}"


def placement_sql(layout: Layout) -> str:
    """The shard_num the Distributed table sends a row to: the sharding key modulo the
    total weight, each shard taking a run of `weight` values in shard order."""
    if len(layout) == 1:
        return str(layout[0][0])
    # modulo(), not %: the statements go through the driver's %(name)s substitution.
    slot = f"modulo({SHARDING_KEY}, {sum(weight for _, weight in layout)})"
    branches, upto = [], 0
    for shard, weight in layout[:-1]:
        upto += weight
        branches.append(f"{slot} < {upto}, {shard}")
    return f"multiIf({', '.join(branches)}, {layout[-1][0]})"


def prepare(client: Client, url: str, cluster: str | None, *, timeout_s: float = 10) -> list[Node]:
    """Create or evolve the mirror's tables: on the node itself, or on every node of the
    cluster; return the cluster's nodes ([] for a single node)."""
    if cluster is None:
        found = _engine(client, TABLE)
        if found is not None and found[0] == "Distributed":
            raise ClusterError(
                f"events at {_address(url)} is a Distributed table ({found[1]}): set "
                "EVENT_METRICS_CLICKHOUSE_CLUSTER to the cluster it reads"
            )
        apply_schema(client)
        return []
    nodes = find_nodes(client, cluster)
    if not nodes:
        raise ClusterError(
            f"ClickHouse cluster {cluster!r} is not in the remote_servers of the server at "
            f"{_address(url)}: name a cluster from SELECT cluster FROM system.clusters"
        )
    database = client.execute("SELECT currentDatabase()")[0][0]
    layout = layout_of(nodes)
    for node in nodes:
        shard = connect(node.url(url), timeout_s=timeout_s)
        try:
            if layout_of(find_nodes(shard, cluster)) != layout:
                raise ClusterError(
                    f"{node} does not define ClickHouse cluster {cluster!r} as the server at "
                    f"{_address(url)} does: every node needs the same remote_servers entry"
                )
            _refuse_single_node_table(shard, node)
            _record_layout(shard, node, layout)
            apply_schema(shard, LOCAL_TABLE)
            _create_distributed(shard, cluster, database)
        finally:
            shard.disconnect()
    # The entry node may be a shard (done above) or a node that only routes queries.
    _refuse_single_node_table(client, None)
    _create_distributed(client, cluster, database)
    return nodes


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 9000}"


def _engine(client: Client, table: str) -> tuple[str, str] | None:
    rows = client.execute(TABLE_ENGINE, {"table": table})
    return (rows[0][0], rows[0][1]) if rows else None


def _refuse_single_node_table(client: Client, node: Node | None) -> None:
    found = _engine(client, TABLE)
    if found is not None and found[0] != "Distributed":
        where = str(node) if node else "the entry node"
        raise ClusterError(
            f"{where} holds a single-node events table ({found[0]}): its rows were not "
            "placed by the cluster's sharding key. Rebuild the mirror from PostgreSQL "
            "(docs/operations.md, 'Moving the mirror to a cluster')"
        )


def _record_layout(client: Client, node: Node, layout: Layout) -> None:
    """Keep the layout the node's rows are placed by; refuse another while it has rows."""
    client.execute(CREATE_LAYOUT)
    recorded = tuple(sorted(client.execute("SELECT shard_num, shard_weight FROM shard_layout")))
    if recorded == layout:
        return
    has_rows = (
        client.execute(f"EXISTS TABLE {LOCAL_TABLE}")[0][0] and client.execute(LOCAL_ROWS)[0][0]
    )
    if recorded and has_rows:
        raise ClusterError(
            f"{node} holds rows placed over shards {recorded} (shard, weight), and the "
            f"cluster now has {layout}: a user would be counted on two shards. Rebuild the "
            "mirror from PostgreSQL (docs/operations.md, 'Changing the shards')"
        )
    # TinyLog has no DELETE: a layout is replaced whole.
    client.execute("DROP TABLE shard_layout")
    client.execute(CREATE_LAYOUT)
    client.execute("INSERT INTO shard_layout (shard_num, shard_weight) VALUES", list(layout))


def _create_distributed(client: Client, cluster: str, database: str) -> None:
    """The Distributed table `events`, as this cluster and database need it. It holds no
    rows (inserts are synchronous), so one defined otherwise is replaced."""
    wanted = distributed_engine(cluster, database)
    found = _engine(client, TABLE)
    if found is not None and "".join(found[1].split()) != "".join(wanted.split()):
        log.info("ClickHouse: the Distributed table was %s; replaced by %s", found[1], wanted)
        client.execute(f"DROP TABLE {TABLE}")
        found = None
    if found is None:
        client.execute(distributed_ddl(cluster, database))
    add_missing_columns(client, TABLE)


@contextlib.contextmanager
def stores(client: Any, url: str, nodes: list[Node], *, timeout_s: float) -> Iterator[list[Store]]:
    """The tables that hold the rows, each with a client: the single node's `events`
    (`client` itself), or every node's local table."""
    if not nodes:
        yield [Store(client, TABLE, None)]
        return
    opened: list[Store] = []
    try:
        for node in nodes:
            opened.append(Store(connect(node.url(url), timeout_s=timeout_s), LOCAL_TABLE, node))
        yield opened
    finally:
        for store in opened:
            store.client.disconnect()


def misplaced(stores: list[Store]) -> dict[Cell, set[str]]:
    """Keys of rows stored on a shard the layout does not place them on, per cell."""
    nodes = [store.node for store in stores if store.node is not None]
    if not nodes:
        return {}
    placement = placement_sql(layout_of(nodes))
    found: dict[Cell, set[str]] = {}
    for store in stores:
        assert store.node is not None
        rows = store.client.execute(
            MISPLACED.format(placement=placement), {"shard": store.node.shard}
        )
        for project_id, day, event_name, keys in rows:
            found.setdefault((project_id, day, event_name), set()).update(keys)
    return found
