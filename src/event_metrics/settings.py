"""Configuration: one `Settings` struct, built once from `EVENT_METRICS_*` variables.

Settings are grouped by the part that uses them (HTTP, access, ingest, writers, metrics,
rollups, replication, lag, telemetry), and each part receives only its group. Each field
names its variable with an `Env` marker; durations are given in the variable's unit
(`_MS`, `_SECONDS`) and held in seconds, converted here once. Tests build settings with
`Settings.build(...)`, by the same variable names, instead of patching the environment.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

PREFIX = "EVENT_METRICS_"

Backend = Literal["postgres", "clickhouse"]


class ConfigError(Exception):
    """A setting has an invalid value; the message names the variable."""


@dataclass(frozen=True)
class Env:
    """The variable a field is read from: `EVENT_METRICS_<name>`, in `unit`, and any
    older names still accepted."""

    name: str
    unit: Literal["", "ms", "s"] = ""
    aliases: tuple[str, ...] = ()

    def to_field(self, value: Any) -> Any:
        return value / 1000 if self.unit == "ms" and value is not None else value


Positive = msgspec.Meta(gt=0)
PositiveInt = Annotated[int, Positive]
# A remote_servers entry's name: an XML element name, also quoted into DDL.
ClusterName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: Annotated[str, Env("HOST")] = "127.0.0.1"
    port: Annotated[int, Env("PORT"), msgspec.Meta(gt=0, le=65535)] = 8080
    workers: Annotated[PositiveInt, Env("HTTP_WORKERS")] = 1
    header_timeout_s: Annotated[float, Env("HEADER_TIMEOUT_MS", "ms"), Positive] = 5.0
    body_timeout_s: Annotated[float, Env("BODY_TIMEOUT_MS", "ms"), Positive] = 10.0
    keepalive_timeout_s: Annotated[float, Env("KEEPALIVE_TIMEOUT_MS", "ms"), Positive] = 5.0
    max_header_bytes: Annotated[PositiveInt, Env("MAX_HEADER_BYTES")] = 64 * 1024
    max_connections: Annotated[PositiveInt, Env("MAX_CONNECTIONS")] = 4_096
    retry_after_s: Annotated[PositiveInt, Env("RETRY_AFTER_SECONDS")] = 1


class AccessSettings(msgspec.Struct, frozen=True, kw_only=True):
    key_refresh_s: Annotated[float, Env("KEY_REFRESH_MS", "ms"), Positive] = 1.0
    key_retry_max_s: Annotated[float, Env("KEY_RETRY_MAX_MS", "ms"), Positive] = 2.0
    rate_limit_events_per_s: Annotated[
        float, Env("RATE_LIMIT_EVENTS_PER_S"), msgspec.Meta(ge=0)
    ] = 0.0
    cors_ingest_origins: Annotated[str, Env("CORS_INGEST_ORIGINS")] = "*"
    cors_read_origins: Annotated[str, Env("CORS_READ_ORIGINS")] = ""


class IngestSettings(msgspec.Struct, frozen=True, kw_only=True):
    max_body_bytes: Annotated[PositiveInt, Env("MAX_BODY_BYTES")] = 5 * 1024 * 1024
    max_events_per_request: Annotated[
        PositiveInt, Env("MAX_EVENTS_PER_REQUEST", aliases=("MAX_BATCH_EVENTS",))
    ] = 10_000
    max_event_bytes: Annotated[PositiveInt, Env("MAX_EVENT_BYTES")] = 64 * 1024
    max_property_depth: Annotated[PositiveInt, Env("MAX_PROPERTY_DEPTH")] = 32
    # A number in exponent form is stored written out (1e5 as 100000): its digits then.
    max_number_digits: Annotated[PositiveInt, Env("MAX_NUMBER_DIGITS")] = 400
    max_future_s: Annotated[PositiveInt, Env("MAX_FUTURE_SECONDS")] = 24 * 3600
    results_full_max: Annotated[PositiveInt, Env("RESULTS_FULL_MAX")] = 100
    queue_max_events: Annotated[PositiveInt, Env("QUEUE_MAX_EVENTS")] = 200_000
    ack_timeout_s: Annotated[float, Env("ACK_TIMEOUT_MS", "ms"), Positive] = 10.0


class WriterSettings(msgspec.Struct, frozen=True, kw_only=True):
    count: Annotated[PositiveInt, Env("WRITER_COUNT")] = 3
    max_events_per_commit: Annotated[
        PositiveInt, Env("MAX_EVENTS_PER_COMMIT", aliases=("BATCH_MAX_EVENTS",))
    ] = 5_000
    # 0: group commit without a timer. A writer that finds events commits them at once;
    # whatever arrives during that commit is the next batch (docs/architecture.md).
    flush_interval_s: Annotated[float, Env("FLUSH_INTERVAL_MS", "ms"), msgspec.Meta(ge=0)] = 0.0
    copy_min_rows: Annotated[PositiveInt, Env("COPY_MIN_ROWS")] = 1_000
    # A second writer starts while one commits only when this many events wait.
    parallel_min_events: Annotated[PositiveInt, Env("PARALLEL_COMMIT_MIN_EVENTS")] = 200
    retry_initial_s: Annotated[float, Env("RETRY_INITIAL_MS", "ms"), Positive] = 0.05
    retry_max_s: Annotated[float, Env("RETRY_MAX_MS", "ms"), Positive] = 2.0
    stall_s: Annotated[float, Env("WRITER_STALL_MS", "ms"), Positive] = 5.0
    shutdown_timeout_s: Annotated[float, Env("SHUTDOWN_TIMEOUT_MS", "ms"), Positive] = 10.0


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    pool_size: Annotated[PositiveInt, Env("DB_POOL_SIZE")] = 4
    max_window_days: Annotated[PositiveInt, Env("MAX_WINDOW_DAYS")] = 400
    query_timeout_s: Annotated[float, Env("QUERY_TIMEOUT_MS", "ms"), Positive] = 30.0
    max_series_rows: Annotated[PositiveInt, Env("MAX_SERIES_ROWS")] = 50_000
    max_running: Annotated[PositiveInt, Env("METRICS_MAX_RUNNING")] = 1
    max_waiting: Annotated[int, Env("METRICS_MAX_WAITING"), msgspec.Meta(ge=0)] = 32
    wait_s: Annotated[float, Env("METRICS_WAIT_MS", "ms"), Positive] = 2.0


class RollupSettings(msgspec.Struct, frozen=True, kw_only=True):
    enabled: Annotated[bool, Env("ROLLUPS")] = True
    interval_s: Annotated[float, Env("ROLLUP_INTERVAL_MS", "ms"), Positive] = 5.0
    block_rows: Annotated[PositiveInt, Env("ROLLUP_BLOCK_ROWS")] = 100_000
    max_pending_rows: Annotated[PositiveInt, Env("ROLLUP_MAX_PENDING_ROWS")] = 200_000
    retry_max_s: Annotated[float, Env("ROLLUP_RETRY_MAX_MS", "ms"), Positive] = 5.0


class ReplicationSettings(msgspec.Struct, frozen=True, kw_only=True):
    enabled: Annotated[bool, Env("REPLICATE")] = True
    batch_rows: Annotated[PositiveInt, Env("REPLICATION_BATCH_ROWS")] = 10_000
    # Once caught up, each cycle copies what arrived since the last: one ClickHouse insert
    # per second, the rate ClickHouse's own guidance asks for. At 5 per second its merges
    # of the small parts cost 8 µs of its CPU per event against 3 (docs/benchmarks.md).
    # With REPLICATOR_PROCESS=false the copy shares the HTTP worker's GIL, and a shorter
    # pause (200 ms) keeps each copy, and the requests it holds up, short.
    interval_s: Annotated[float, Env("REPLICATION_INTERVAL_MS", "ms"), Positive] = 1.0
    retry_max_s: Annotated[float, Env("REPLICATION_RETRY_MAX_MS", "ms"), Positive] = 5.0
    # `serve` runs it as a child process: its work then never holds up a request.
    process: Annotated[bool, Env("REPLICATOR_PROCESS")] = True
    # serve restarts a child that exits after 0.5 s, doubling up to this.
    process_restart_max_s: Annotated[float, Env("REPLICATOR_RESTART_MAX_MS", "ms"), Positive] = 5.0


class LagSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the replicator and the rollup refresher measure how far behind they are."""

    interval_s: Annotated[float, Env("LAG_INTERVAL_MS", "ms"), Positive] = 1.0
    # Counted exactly up to this many rows, estimated from the id range beyond: an exact
    # count costs per row, the estimate one index probe (docs/architecture.md).
    exact_rows: Annotated[PositiveInt, Env("LAG_EXACT_ROWS")] = 10_000


class TelemetrySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Prometheus: the route, and the worker that keeps each process's gauges current."""

    enabled: Annotated[bool, Env("PROMETHEUS")] = True  # GET /internal/metrics
    gauge_interval_s: Annotated[float, Env("TELEMETRY_GAUGE_INTERVAL_MS", "ms"), Positive] = 1.0
    retry_max_s: Annotated[float, Env("TELEMETRY_RETRY_MAX_MS", "ms"), Positive] = 5.0


class LifecycleSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Moving a project's events out and in: GET /export, `export`, `import`."""

    export_page_rows: Annotated[PositiveInt, Env("EXPORT_PAGE_ROWS")] = 5_000
    export_max_running: Annotated[PositiveInt, Env("EXPORT_MAX_RUNNING")] = 2
    # Rows per import transaction: large enough that a commit's fixed cost vanishes,
    # small enough that the followers (replicator, rollups) see progress often.
    import_batch_rows: Annotated[PositiveInt, Env("IMPORT_BATCH_ROWS")] = 20_000


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every threshold the service uses, with defaults that work on a laptop."""

    # Storage. With no database_url, `serve` starts an embedded PostgreSQL under data_dir.
    database_url: Annotated[str | None, Env("DATABASE_URL")] = None
    data_dir: Annotated[str, Env("DATA_DIR")] = ".data"
    # As root: where the embedded PostgreSQL's data and programs go when its unprivileged
    # user cannot reach them where they are (embedded_as_root.py).
    embedded_postgres_dir: Annotated[str, Env("EMBEDDED_POSTGRES_DIR")] = "/var/lib/event-metrics"
    backend: Annotated[Backend, Env("BACKEND")] = "postgres"
    clickhouse_url: Annotated[str | None, Env("CLICKHOUSE_URL")] = None
    # The mirror is sharded over this remote_servers cluster; CLICKHOUSE_URL is the node
    # the service talks to (docs/operations.md).
    clickhouse_cluster: Annotated[ClusterName | None, Env("CLICKHOUSE_CLUSTER")] = None
    log_format: Annotated[Literal["text", "json"], Env("LOG_FORMAT")] = "text"
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Env("LOG_LEVEL")] = "info"
    access_log: Annotated[bool, Env("ACCESS_LOG")] = False  # one line per request

    http: HttpSettings = HttpSettings()
    access: AccessSettings = AccessSettings()
    ingest: IngestSettings = IngestSettings()
    writer: WriterSettings = WriterSettings()
    metrics: MetricsSettings = MetricsSettings()
    rollups: RollupSettings = RollupSettings()
    replication: ReplicationSettings = ReplicationSettings()
    lag: LagSettings = LagSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    def __post_init__(self) -> None:
        if self.writer.max_events_per_commit > self.ingest.queue_max_events:
            raise ConfigError(
                f"{PREFIX}MAX_EVENTS_PER_COMMIT must not exceed {PREFIX}QUEUE_MAX_EVENTS"
            )
        if self.ingest.max_events_per_request > self.ingest.queue_max_events:
            raise ConfigError(
                f"{PREFIX}MAX_EVENTS_PER_REQUEST must not exceed {PREFIX}QUEUE_MAX_EVENTS"
            )
        if self.backend == "clickhouse" and not self.clickhouse_url:
            raise ConfigError(f"{PREFIX}BACKEND=clickhouse needs {PREFIX}CLICKHOUSE_URL")
        if self.clickhouse_cluster and not self.clickhouse_url:
            raise ConfigError(
                f"{PREFIX}CLICKHOUSE_CLUSTER needs {PREFIX}CLICKHOUSE_URL (a node of the cluster)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `EVENT_METRICS_*` variables; an invalid value raises ConfigError naming it."""
        env = os.environ if environ is None else environ
        values = {key[len(PREFIX) :]: raw for key, raw in env.items() if key.startswith(PREFIX)}
        # strict=False lets "8080" become an int and "false" a bool.
        return cls.build(strict=False, **{name.lower(): raw for name, raw in values.items()})

    @classmethod
    def build(cls, *, strict: bool = True, **values: Any) -> Settings:
        """Settings from values named like the variables (`flush_interval_ms=5`), lower case
        and without the prefix; names that are not settings are ignored."""
        return _convert(_nest(values), strict=strict)

    def updated(self, **values: Any) -> Settings:
        """A copy with some values changed, named like the variables (for tests)."""
        return _convert(_merge(msgspec.to_builtins(self), _nest(values)), strict=True)


# --- the variables table, derived from the Env markers above ----------------------------


@dataclass(frozen=True)
class Variable:
    env: Env
    group: str | None  # None: a field of Settings itself
    field: str

    @property
    def name(self) -> str:
        return PREFIX + self.env.name

    @property
    def default(self) -> Any:
        """The default as the variable reads it (milliseconds for an `_MS` variable)."""
        defaults = Settings() if self.group is None else getattr(Settings(), self.group)
        value = getattr(defaults, self.field)
        if self.env.unit == "ms":
            return round(value * 1000)
        return value


def _env_of(struct: type[msgspec.Struct], field: str) -> Env:
    hints = typing.get_type_hints(struct, include_extras=True)
    for meta in getattr(hints[field], "__metadata__", ()):
        if isinstance(meta, Env):
            return meta
    raise TypeError(f"{struct.__name__}.{field} names no variable")


def variables() -> Iterator[Variable]:
    """Every setting's variable, in the order of the groups."""
    for info in msgspec.structs.fields(Settings):
        if isinstance(info.default, msgspec.Struct):
            group = type(info.default)
            for inner in msgspec.structs.fields(group):
                yield Variable(_env_of(group, inner.name), info.name, inner.name)
        else:
            yield Variable(_env_of(Settings, info.name), None, info.name)


def _by_name() -> dict[str, Variable]:
    table = {}
    for variable in variables():
        for name in (variable.env.name, *variable.env.aliases):
            table[name.lower()] = variable
    return table


VARIABLES = _by_name()
# Read by the tests and .ci/run, or set by `serve` for its own processes
# (replicator_process.py), not configuration: known, so not warned about.
TEST_VARIABLES = (
    "REQUIRE_SERVICES",
    "TEST_POSTGRES_URL",
    "CLICKHOUSE_BINARY",
    "REPLICATOR_STATUS_FILE",
)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """`EVENT_METRICS_*` names no setting reads (a typo, say), each with the closest
    known name."""
    import difflib

    known = [PREFIX + v.env.name for v in variables()]
    unknown = []
    for key in sorted(environ):
        name = key[len(PREFIX) :]
        if key.startswith(PREFIX) and name.lower() not in VARIABLES and name not in TEST_VARIABLES:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            unknown.append((key, close[0] if close else None))
    return unknown


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        variable = VARIABLES.get(key.lower())
        if variable is None:
            continue  # e.g. EVENT_METRICS_REQUIRE_SERVICES belongs to the tests
        if isinstance(value, str) and variable.env.unit == "ms":
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{variable.name}: expected a number of milliseconds") from None
        target = nested.setdefault(variable.group, {}) if variable.group else nested
        target[variable.field] = variable.env.to_field(value)
    return nested


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _convert(values: dict[str, Any], *, strict: bool) -> Settings:
    try:
        return msgspec.convert(values, Settings, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_variable(str(exc))) from None


def _name_variable(message: str) -> str:
    # msgspec says "... - at `$.writer.flush_interval_s`"; name the variable instead.
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    parts = path.rstrip("`").split(".")
    for variable in variables():
        if parts in ([variable.group, variable.field], [variable.field]):
            unit = " (the value is read in milliseconds)" if variable.env.unit == "ms" else ""
            return f"{variable.name}: {head}{unit}"
    return message
