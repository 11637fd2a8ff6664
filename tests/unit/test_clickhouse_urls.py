"""ClickHouse URLs: a server's or a chdb directory, checked once in Settings."""

from __future__ import annotations

import pytest

from event_metrics.clickhouse_client import chdb_path, check_url, is_chdb, parse_version
from event_metrics.settings import ConfigError, Settings


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("chdb:///var/lib/event-metrics/mirror", "/var/lib/event-metrics/mirror"),
        ("chdb://.data/clickhouse", ".data/clickhouse"),
    ],
)
def test_a_chdb_url_names_a_directory(url: str, path: str) -> None:
    assert is_chdb(url) and check_url(url) is None
    assert chdb_path(url) == path


def test_server_urls_are_not_chdb() -> None:
    for url in ("clickhouse://default@127.0.0.1:9000/default", "clickhouses://h:9440/db"):
        assert not is_chdb(url) and check_url(url) is None


def test_a_bad_clickhouse_url_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="EVENT_METRICS_CLICKHOUSE_URL: scheme 'mysql'"):
        Settings.build(clickhouse_url="mysql://h/db")
    with pytest.raises(ConfigError, match="EVENT_METRICS_CLICKHOUSE_URL: chdb:// needs"):
        Settings.build(clickhouse_url="chdb://")


def test_chdb_keeps_the_service_in_one_process() -> None:
    assert Settings.build(clickhouse_url="chdb:///tmp/m").http.workers == 1
    with pytest.raises(ConfigError, match="EVENT_METRICS_HTTP_WORKERS must be 1"):
        Settings.build(clickhouse_url="chdb:///tmp/m", http_workers=2)
    assert Settings.build(clickhouse_url="clickhouse://h/db", http_workers=2).http.workers == 2


def test_chdb_cannot_be_a_cluster_node() -> None:
    """chdb runs inside the service process: no other shard's Distributed table reaches it."""
    with pytest.raises(
        ConfigError, match="EVENT_METRICS_CLICKHOUSE_CLUSTER needs a ClickHouse server"
    ):
        Settings.build(clickhouse_url="chdb:///tmp/m", clickhouse_cluster="events_cluster")
    cluster = Settings.build(
        clickhouse_url="clickhouse://h/db", clickhouse_cluster="events_cluster"
    )
    assert cluster.clickhouse_cluster == "events_cluster"


def test_versions_are_read_as_major_minor() -> None:
    assert parse_version("18.16.1") == (18, 16)
    assert parse_version('"26.9.2.1"') == (26, 9)
    assert parse_version("25.8") == (25, 8)
