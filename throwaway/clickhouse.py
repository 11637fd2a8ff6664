"""A throwaway ClickHouse server (Debian's clickhouse-server, or any `clickhouse` binary)
as a child process: native protocol only, on 127.0.0.1 and a free port kept across
restarts, with its data, config and logs under one folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape

# Names a server binary instead of the one on PATH (`clickhouse-server`, or the
# multi-call `clickhouse`, which gets the `server` argument).
BINARY_ENV = "EVENT_METRICS_CLICKHOUSE_BINARY"
HOST = "127.0.0.1"

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/server.err.log</errorlog><console>0</console></logger>
    <listen_host>{host}</listen_host>
    <tcp_port>{port}</tcp_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>{timezone}</timezone>
    <max_concurrent_queries>64</max_concurrent_queries>
    <mark_cache_size>67108864</mark_cache_size>
    <mlock_executable>false</mlock_executable>
    <max_table_size_to_drop>0</max_table_size_to_drop>
{remote_servers}</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password>
        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"""


def find_binary() -> list[str] | None:
    """The command that starts a ClickHouse server here, or None."""
    override = os.environ.get(BINARY_ENV)
    candidates = [override] if override else ["clickhouse-server", "/usr/sbin/clickhouse-server",
                                              "clickhouse", "/usr/bin/clickhouse"]  # fmt: skip
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return [found] if Path(found).name.endswith("-server") else [found, "server"]
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Shard(NamedTuple):
    """A shard of one replica: its server's host and native port, and its weight."""

    host: str
    port: int
    weight: int = 1


def remote_servers(clusters: Mapping[str, Sequence[Shard]]) -> str:
    """The `remote_servers` section naming each cluster's shards, as operators write it."""
    if not clusters:
        return ""
    sections = []
    for name, shards in clusters.items():
        body = "".join(
            f"<shard><weight>{weight}</weight><replica><host>{escape(host)}</host>"
            f"<port>{port}</port></replica></shard>"
            for host, port, weight in shards
        )
        sections.append(f"        <{name}>{body}</{name}>\n")
    return f"    <remote_servers>\n{''.join(sections)}    </remote_servers>\n"


class ClickHouseServer:
    """start() / stop() / kill(); a restart keeps the port and the data.

    `clusters` (set before start()) becomes the server's `remote_servers`: the clusters a
    Distributed table on it may name.
    """

    def __init__(self, directory: Path, *, timezone: str = "UTC") -> None:
        self.directory = Path(directory).resolve()
        self.timezone = timezone  # the server's own zone, which naive DateTime text means
        self.port = free_port()
        self.clusters: dict[str, list[Shard]] = {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"clickhouse://default@{HOST}:{self.port}/default"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30) -> None:
        """Start, and wait until `SELECT 1` answers; raise with the log tail otherwise."""
        if self.is_running():
            return
        command = find_binary()
        if command is None:
            raise FileNotFoundError(
                "no ClickHouse server binary (apt-get install clickhouse-server)"
            )
        for name in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.xml"
        config.write_text(
            CONFIG.format(
                dir=escape(str(self.directory)), host=HOST, port=self.port,
                timezone=escape(self.timezone), remote_servers=remote_servers(self.clusters),
            )
        )  # fmt: skip
        (self.directory / "users.xml").write_text(USERS)
        with (self.directory / "log" / "stdout.log").open("ab") as out:
            self._process = subprocess.Popen(
                [*command, f"--config-file={config}"], cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        from clickhouse_driver import Client

        deadline = time.monotonic() + timeout_s
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited during start\n{self._log_tail()}")
            client = Client(host=HOST, port=self.port, connect_timeout=1, send_receive_timeout=5)
            try:
                if client.execute("SELECT 1") == [(1,)]:
                    return
            except Exception:  # not listening or still loading: try again
                pass
            finally:
                client.disconnect()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"clickhouse-server did not answer in {timeout_s}s\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM, then SIGKILL after timeout_s."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything."""
        self._signal(signal.SIGKILL, 10)

    def _signal(self, signum: int, timeout_s: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _log_tail(self) -> str:
        parts = []
        for name in ("stdout.log", "server.err.log"):
            path = self.directory / "log" / name
            if path.exists():
                parts.append(
                    f"--- {path} ---\n{path.read_bytes()[-3000:].decode(errors='replace')}"
                )
        return "\n".join(parts)


def start_cluster(directory: Path, clusters: Mapping[str, Sequence[int]]) -> list[ClickHouseServer]:
    """Servers that all define `clusters`: each named cluster has every server as a shard,
    in order, with the given weights (one per server)."""
    count = len(next(iter(clusters.values())))
    assert all(len(weights) == count for weights in clusters.values())
    servers = [ClickHouseServer(Path(directory) / f"shard-{n}") for n in range(1, count + 1)]
    for server in servers:
        for name, weights in clusters.items():
            server.clusters[name] = [
                Shard(HOST, each.port, weight)
                for each, weight in zip(servers, weights, strict=True)
            ]
    try:
        for server in servers:
            server.start()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
