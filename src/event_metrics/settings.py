"""Configuration: one `Settings` struct built once from `EVENT_METRICS_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

PREFIX = "EVENT_METRICS_"

Backend = Literal["postgres", "clickhouse"]


class ConfigError(Exception):
    """A setting has an invalid value; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every threshold the service uses, with defaults that work on a laptop."""

    # Storage. With no database_url, `serve` starts an embedded PostgreSQL under data_dir.
    database_url: str | None = None
    data_dir: str = ".data"
    backend: Backend = "postgres"
    clickhouse_url: str | None = None

    # HTTP.
    host: str = "127.0.0.1"
    port: int = 8080
    http_workers: int = 1
    max_body_bytes: int = 5 * 1024 * 1024
    max_batch_events: int = 10_000
    max_event_bytes: int = 64 * 1024
    max_property_depth: int = 32
    body_timeout_ms: int = 10_000
    header_timeout_ms: int = 5_000
    keepalive_timeout_ms: int = 5_000
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4_096
    max_future_seconds: int = 24 * 3600
    results_full_max: int = 100

    # Ingest queue and writers.
    queue_max_events: int = 200_000
    batch_max_events: int = 5_000
    flush_interval_ms: int = 5
    writer_count: int = 3
    copy_min_rows: int = 1000
    ack_timeout_ms: int = 10_000
    retry_initial_ms: int = 50
    retry_max_ms: int = 2_000
    writer_stall_ms: int = 5_000
    retry_after_seconds: int = 1
    shutdown_timeout_ms: int = 10_000
    db_pool_size: int = 4

    # Metrics.
    max_window_days: int = 400
    query_timeout_ms: int = 30_000
    max_series_rows: int = 50_000
    metrics_max_running: int = 1
    metrics_max_waiting: int = 32
    metrics_wait_ms: int = 2_000

    # Rollups (pre-aggregated hours and days with exact user bitmaps) for /metrics.
    rollups: bool = True
    rollup_interval_ms: int = 5_000
    rollup_block_rows: int = 100_000
    rollup_max_pending_rows: int = 200_000
    rollup_retry_max_ms: int = 5_000

    # Replication to ClickHouse.
    replicate: bool = True
    replication_batch_rows: int = 10_000
    replication_interval_ms: int = 1_000
    replication_retry_max_ms: int = 5_000

    def __post_init__(self) -> None:
        positive = (
            "port", "http_workers", "max_body_bytes", "max_batch_events", "max_event_bytes",
            "queue_max_events", "batch_max_events", "writer_count", "copy_min_rows",
            "ack_timeout_ms", "retry_initial_ms", "retry_max_ms", "retry_after_seconds",
            "shutdown_timeout_ms", "db_pool_size", "max_window_days", "query_timeout_ms",
            "replication_batch_rows", "replication_interval_ms", "replication_retry_max_ms",
            "results_full_max", "max_future_seconds", "rollup_interval_ms", "rollup_block_rows",
            "rollup_max_pending_rows", "rollup_retry_max_ms", "writer_stall_ms",
            "max_property_depth", "body_timeout_ms", "header_timeout_ms",
            "keepalive_timeout_ms", "max_header_bytes", "max_connections", "max_series_rows",
            "metrics_max_running", "metrics_wait_ms",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be a positive integer")
        if self.metrics_max_waiting < 0:
            raise ConfigError(f"{PREFIX}METRICS_MAX_WAITING must not be negative")
        if self.flush_interval_ms < 0:
            raise ConfigError(f"{PREFIX}FLUSH_INTERVAL_MS must not be negative")
        if self.port > 65535:
            raise ConfigError(f"{PREFIX}PORT must be at most 65535")
        if self.batch_max_events > self.queue_max_events:
            raise ConfigError(f"{PREFIX}BATCH_MAX_EVENTS must not exceed {PREFIX}QUEUE_MAX_EVENTS")
        if self.max_batch_events > self.queue_max_events:
            raise ConfigError(f"{PREFIX}MAX_BATCH_EVENTS must not exceed {PREFIX}QUEUE_MAX_EVENTS")
        if self.backend == "clickhouse" and not self.clickhouse_url:
            raise ConfigError(f"{PREFIX}BACKEND=clickhouse needs {PREFIX}CLICKHOUSE_URL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `EVENT_METRICS_*` variables; an invalid value raises ConfigError naming it."""
        env = os.environ if environ is None else environ
        known = {f.name for f in msgspec.structs.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            if name not in known:
                continue  # e.g. EVENT_METRICS_REQUIRE_SERVICES belongs to the tests
            values[name] = raw
        try:
            # strict=False lets "8080" become an int and "false" a bool.
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_variable(str(exc))) from None

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000


def _name_variable(message: str) -> str:
    # msgspec says "... - at `$.port`"; turn the path into the variable name.
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{PREFIX}{path.rstrip('`').upper()}: {head}"
