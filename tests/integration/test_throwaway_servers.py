"""The throwaway servers the tests and benchmarks start: restart keeps data and port,
SIGKILL loses nothing committed, only the native port is open."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_driver import Client
from throwaway.clickhouse import ClickHouseServer, find_binary

from conftest import unavailable


@pytest.fixture
def server(tmp_path: Path) -> ClickHouseServer:
    if find_binary() is None:
        unavailable("clickhouse-server is not installed")
    return ClickHouseServer(tmp_path / "ch")


def _listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state owned by ``pid`` (Linux /proc; empty set elsewhere)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.exists():
        return set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_restart_keeps_data_and_port(server: ClickHouseServer) -> None:
    try:
        server.start()
        port = server.port
        assert server.url == f"clickhouse://default@127.0.0.1:{port}/default"
        client = Client.from_url(server.url)
        client.execute(
            "CREATE TABLE t (id UInt64, ts DateTime('UTC'), name String) "
            "ENGINE = MergeTree() ORDER BY id"
        )
        rows = [(i, datetime(2026, 11, 1, 6, 0, i, tzinfo=UTC), f"n{i}") for i in range(10)]
        client.execute("INSERT INTO t (id, ts, name) VALUES", rows)
        client.disconnect()

        server.stop()
        assert not server.is_running()
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "port still open after stop()"

        server.start()
        assert server.port == port
        client = Client.from_url(server.url)
        got = client.execute("SELECT id, toUInt32(ts), name FROM t ORDER BY id")
        client.disconnect()
        assert got == [(i, int(ts.timestamp()), name) for i, ts, name in rows]
    finally:
        server.stop()


def test_survives_sigkill(server: ClickHouseServer) -> None:
    try:
        server.start()
        client = Client.from_url(server.url)
        client.execute("CREATE TABLE k (x UInt64) ENGINE = MergeTree() ORDER BY x")
        client.execute("INSERT INTO k (x) VALUES", [(1,), (2,), (3,)])
        client.disconnect()
        server.kill()
        server.start()
        client = Client.from_url(server.url)
        assert client.execute("SELECT sum(x) FROM k") == [(6,)]
        client.disconnect()
    finally:
        server.stop()


def test_binds_only_native_port_on_loopback(server: ClickHouseServer) -> None:
    try:
        server.start()
        assert server.pid is not None
        ports = _listening_ports(server.pid)
        if ports:  # /proc available
            assert ports == {server.port}
        config = (server.directory / "config.xml").read_text()
        assert "<listen_host>127.0.0.1</listen_host>" in config
        assert "http_port" not in config
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            assert (server.directory / sub).is_dir()
        assert (server.directory / "log" / "stdout.log").exists()
    finally:
        server.stop()
