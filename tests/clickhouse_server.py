"""Run a throwaway ClickHouse server (Debian's 18.16 package) as a plain child process.

Used by pytest fixtures and benchmarks.  Everything lives under one folder::

    data_dir/
        config.xml, users.xml      written by this module on every start()
        data/                      <path>        (tables, metadata, preprocessed_configs)
        tmp/ user_files/ format_schemas/
        log/server.log, log/server.err.log, log/stdout.log

The server listens on 127.0.0.1 only and opens only the native TCP port (no HTTP, no
interserver, no MySQL/PostgreSQL protocol ports).  The port is chosen at the first start()
and kept, so ``stop(); start()`` comes back on the same port with the same data.

The only import outside the standard library is ``clickhouse_driver`` (a runtime dependency
of the project), used lazily to wait until ``SELECT 1`` answers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO
from xml.sax.saxutils import escape

__all__ = ["ClickHouseServer", "ClickHouseStartError", "find_clickhouse_binary"]

#: Environment variable that may name the binary (``/path/clickhouse-server`` or
#: ``/path/clickhouse``; the multi-call binary gets the ``server`` argument).
BINARY_ENV = "EVENT_METRICS_CLICKHOUSE_BINARY"

_HOST = "127.0.0.1"

_CONFIG_TEMPLATE = """<?xml version="1.0"?>
<!-- Written by tests/clickhouse_server.py; rewritten on every start. -->
<yandex>
    <logger>
        <level>{log_level}</level>
        <log>{log_dir}/server.log</log>
        <errorlog>{log_dir}/server.err.log</errorlog>
        <size>10M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <listen_host>{host}</listen_host>
    <tcp_port>{port}</tcp_port>
    <path>{data}/</path>
    <tmp_path>{tmp}/</tmp_path>
    <user_files_path>{user_files}/</user_files_path>
    <format_schema_path>{format_schemas}/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>{timezone}</timezone>
    <max_connections>256</max_connections>
    <max_concurrent_queries>64</max_concurrent_queries>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <builtin_dictionaries_reload_interval>0</builtin_dictionaries_reload_interval>
    <mlock_executable>false</mlock_executable>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
</yandex>
"""

_USERS_XML = """<?xml version="1.0"?>
<!-- Written by tests/clickhouse_server.py. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
"""

_live_servers: weakref.WeakSet[ClickHouseServer] = weakref.WeakSet()


class ClickHouseStartError(RuntimeError):
    """The server exited or did not answer ``SELECT 1`` in time."""


def find_clickhouse_binary() -> list[str] | None:
    """Return the argv prefix that starts a ClickHouse server, or None if none is installed.

    Order: ``$EVENT_METRICS_CLICKHOUSE_BINARY``, ``clickhouse-server`` (Debian package, on PATH
    or in /usr/sbin), then the multi-call ``clickhouse`` binary with the ``server`` argument.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = shutil.which(override) or override
        if not os.access(path, os.X_OK):
            return None
        return _argv_for(path)
    for candidate in ("clickhouse-server", "/usr/sbin/clickhouse-server"):
        found = shutil.which(candidate)
        if found:
            return [found]
    for candidate in ("clickhouse", "/usr/bin/clickhouse"):
        found = shutil.which(candidate)
        if found:
            return [found, "server"]
    return None


def _argv_for(path: str) -> list[str]:
    return [path] if Path(path).name.endswith("-server") else [path, "server"]


def _free_port(host: str = _HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


class ClickHouseServer:
    """A ClickHouse server child process owning ``data_dir``.

    ``port`` defaults to a free port picked at the first :meth:`start` and then kept for the
    lifetime of the object.  ``timezone`` is the server time zone (``<timezone>``); the default
    ``UTC`` makes naive DateTime strings mean UTC.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        timezone: str = "UTC",
        binary: Sequence[str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.timezone = timezone
        self.log_level = log_level
        self._binary = list(binary) if binary is not None else None
        self._port = port
        self._port_pinned = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("port is chosen at the first start()")
        return self._port

    @property
    def url(self) -> str:
        """URL for ``clickhouse_driver.Client.from_url``."""
        return f"clickhouse://default@{_HOST}:{self.port}/default"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "config.xml"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30) -> None:
        """Start the server and wait until ``SELECT 1`` answers over the native protocol.

        No-op if already running.  Raises :class:`ClickHouseStartError` (with the log tail)
        if the process exits or does not answer within ``timeout_s``.
        """
        if self.is_running():
            return
        self._cleanup_process()
        argv = self._binary if self._binary is not None else find_clickhouse_binary()
        if argv is None:
            raise FileNotFoundError("no ClickHouse server binary found")
        # A freshly picked port can be grabbed by someone else before the server binds it;
        # retry with another port, but only while the port is not yet part of our identity.
        attempts = 1 if (self._port_pinned or self._port is not None) else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = _free_port()
            try:
                self._spawn(argv)
                self._wait_ready(timeout_s)
                break
            except ClickHouseStartError as exc:
                self._terminate(grace_s=2.0)
                in_use = "Address already in use" in str(exc)
                if in_use and attempt + 1 < attempts:
                    self._port = None
                    continue
                raise
        _live_servers.add(self)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL.  Data and port are kept."""
        self._terminate(grace_s=timeout_s)
        _live_servers.discard(self)

    def kill(self) -> None:
        """SIGKILL without a graceful shutdown (simulates a crash).  Data and port are kept."""
        self._terminate(grace_s=0.0)
        _live_servers.discard(self)

    def restart(self, timeout_s: float = 30) -> None:
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> ClickHouseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def _write_config(self) -> None:
        dirs = {name: self.data_dir / name for name in ("data", "tmp", "user_files")}
        dirs["format_schemas"] = self.data_dir / "format_schemas"
        dirs["log_dir"] = self.log_dir
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        values = {key: escape(str(path)) for key, path in dirs.items()}
        text = _CONFIG_TEMPLATE.format(
            host=_HOST,
            port=self.port,
            timezone=escape(self.timezone),
            log_level=escape(self.log_level),
            **values,
        )
        self.config_path.write_text(text, encoding="utf-8")
        (self.data_dir / "users.xml").write_text(_USERS_XML, encoding="utf-8")

    def _spawn(self, argv: Sequence[str]) -> None:
        self._write_config()
        stdout_path = self.log_dir / "stdout.log"
        self._stdout = stdout_path.open("ab")
        self._stdout.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
        self._stdout.flush()
        self._proc = subprocess.Popen(
            [*argv, f"--config-file={self.config_path}"],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            # Same process group as the caller on purpose: a Ctrl-C or `kill -- -PGID` aimed
            # at pytest also stops the server instead of leaving it orphaned.
        )

    def _wait_ready(self, timeout_s: float) -> None:
        from clickhouse_driver import Client  # project dependency; imported lazily

        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            code = proc.poll()
            if code is not None:
                raise ClickHouseStartError(
                    f"clickhouse-server exited with code {code} during start\n{self._logs()}"
                )
            if self._port_open():
                client = Client(
                    host=_HOST, port=self.port, connect_timeout=1, send_receive_timeout=5
                )
                try:
                    if client.execute("SELECT 1") == [(1,)]:
                        return
                except Exception as exc:  # not ready yet (e.g. still loading tables)
                    last_error = exc
                finally:
                    client.disconnect()
            if time.monotonic() >= deadline:
                raise ClickHouseStartError(
                    f"clickhouse-server did not answer SELECT 1 on {_HOST}:{self.port} within "
                    f"{timeout_s}s (last error: {last_error!r})\n{self._logs()}"
                )
            time.sleep(0.02)

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((_HOST, self.port)) == 0

    def _logs(self) -> str:
        parts = []
        for name in ("stdout.log", "server.err.log"):
            text = _tail(self.log_dir / name)
            if text.strip():
                parts.append(f"--- {self.log_dir / name} (tail) ---\n{text}")
        return "\n".join(parts)

    def _terminate(self, grace_s: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            sig = signal.SIGTERM if grace_s > 0 else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace_s if grace_s > 0 else 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self._cleanup_process()

    def _cleanup_process(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None and self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        state = "running" if self.is_running() else "stopped"
        return f"<ClickHouseServer {_HOST}:{port} {state} data_dir={self.data_dir}>"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop(timeout_s=5)
