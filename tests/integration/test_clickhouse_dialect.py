"""Dialect probe: the SQL the ClickHouse mirror relies on, run on ClickHouse 18.16 AND chdb.

Every statement runs unchanged on both engines:

* ``ch18``: the Debian ``clickhouse-server`` 18.16 started by ``tests/clickhouse_server.py``,
  queried through ``clickhouse_driver`` with client-side ``%(name)s`` substitution;
* ``chdb``: in-process ClickHouse (26.x); ``%(name)s`` is rendered with clickhouse_driver's
  own escaping so both engines see the same SQL text.

Known engine bugs are ``xfail(strict=True)``: they fail the suite as soon as they stop being
bugs, so the findings in the docstrings stay true.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_params
from throwaway.clickhouse import ClickHouseServer, find_binary

from event_metrics import metrics_clickhouse, verify
from event_metrics.chdb_client import ChdbClient
from event_metrics.clickhouse import MIGRATIONS, apply_schema, events_ddl, reads_final
from event_metrics.clickhouse_client import ClickHouseClient, DriverClient
from event_metrics.metrics import MetricsQuery
from event_metrics.replicator import PRESENT_IDS_CHUNK, block_token, copy_rows, split_by_month
from event_metrics.schema import MIRRORED_COLUMNS

REQUIRE_SERVICES = os.environ.get("EVENT_METRICS_REQUIRE_SERVICES") == "1"

EVENTS_DDL = events_ddl("{table}")
EVENTS_COLUMNS = ", ".join(MIRRORED_COLUMNS)
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (version UInt32, name String, "
    "applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version"
)

Row = tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------


class _ServerInfo:
    def __init__(self, timezone: str) -> None:
        self._timezone = timezone

    def get_timezone(self) -> str:
        return self._timezone


class _EscapeContext:
    """The bit of clickhouse_driver's context that ``escape_params`` reads."""

    def __init__(self, timezone: str) -> None:
        self.server_info = _ServerInfo(timezone)


@dataclass
class Engine:
    name: str
    run: Callable[[str, dict[str, Any] | None], list[Row]]
    insert_rows: Callable[[str, str, list[Row]], None]
    version_major: int = 0

    def __call__(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self.run(sql, params)

    def insert(self, table: str, columns: str, rows: list[Row]) -> None:
        """Rows of Python values (DateTime columns as epoch ints)."""
        self.insert_rows(table, columns, rows)


def _sql_literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _driver_engine(client: Client, name: str = "ch18") -> Engine:
    def run(sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        rows: list[Row] = client.execute(sql, params)
        return [tuple(r) for r in rows]

    def insert(table: str, columns: str, rows: list[Row]) -> None:
        # NB: inline "INSERT ... VALUES (...)" text hangs on 18.16 through the native protocol;
        # data must go as the driver's second argument.
        client.execute(f"INSERT INTO {table} ({columns}) VALUES", rows)

    engine = Engine(name, run, insert)
    engine.version_major = engine("SELECT toUInt64(splitByChar('.', version())[1])")[0][0]
    return engine


def _parse_chdb(raw: str) -> list[Row]:
    if not raw.strip():
        return []
    doc = json.loads(raw)
    converters: list[Callable[[Any], Any]] = []
    for col in doc["meta"]:
        ctype: str = col["type"]
        if ctype.startswith(("UInt", "Int")):
            converters.append(int)
        elif ctype == "Date":
            converters.append(date.fromisoformat)
        else:
            converters.append(lambda v: v)
    return [tuple(conv(v) for conv, v in zip(converters, row, strict=True)) for row in doc["data"]]


def _chdb_engine(session: Any, timezone: str = "Etc/UTC") -> Engine:
    context = _EscapeContext(timezone)

    def run(sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        if params:
            sql = sql % escape_params(params, context)
        return _parse_chdb(str(session.query(sql, "JSONCompact")))

    def insert(table: str, columns: str, rows: list[Row]) -> None:
        values = ", ".join("(" + ", ".join(_sql_literal(v) for v in row) + ")" for row in rows)
        session.query(f"INSERT INTO {table} ({columns}) VALUES {values}")

    engine = Engine("chdb", run, insert)
    engine.version_major = engine("SELECT toUInt64(splitByChar('.', version())[1])")[0][0]
    return engine


def _need_server() -> None:
    if find_binary() is None:
        if REQUIRE_SERVICES:
            pytest.fail("clickhouse-server not found (EVENT_METRICS_REQUIRE_SERVICES=1)")
        pytest.skip("clickhouse-server not installed")


@pytest.fixture(scope="module")
def ch18_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    _need_server()
    server = ClickHouseServer(tmp_path_factory.mktemp("ch18"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ch18_client(ch18_server: ClickHouseServer) -> Iterator[Client]:
    client = Client.from_url(ch18_server.url + "?send_receive_timeout=60")
    try:
        yield client
    finally:
        client.disconnect()


@pytest.fixture(scope="module")
def ch18(ch18_client: Client) -> Engine:
    return _driver_engine(ch18_client)


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("chdb"))


@pytest.fixture(scope="module")
def chdb_session(chdb_dir: str) -> Iterator[Any]:
    session_mod = pytest.importorskip("chdb.session")
    session = session_mod.Session(chdb_dir)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="module")
def chdb_engine(chdb_session: Any) -> Engine:
    return _chdb_engine(chdb_session)


@pytest.fixture(params=["ch18", "chdb"], scope="module")
def engine(request: pytest.FixtureRequest) -> Engine:
    fixture = "ch18" if request.param == "ch18" else "chdb_engine"
    result: Engine = request.getfixturevalue(fixture)
    return result


def _fresh(engine: Engine, table: str, ddl: str = EVENTS_DDL) -> None:
    engine(f"DROP TABLE IF EXISTS {table}")
    engine(ddl.format(table=table))


# --------------------------------------------------------------------------------------------
# version / DDL
# --------------------------------------------------------------------------------------------


def test_version(engine: Engine) -> None:
    [(version, major)] = engine(
        "SELECT version(), toUInt64(splitByChar('.', version())[1]) AS major"
    )
    assert major == int(version.split(".")[0])
    assert major == (18 if engine.name == "ch18" else engine.version_major)
    assert major >= 18


def test_events_ddl_and_settings_clause(engine: Engine) -> None:
    _fresh(engine, "events")
    engine(EVENTS_DDL.format(table="events"))  # IF NOT EXISTS: idempotent
    engine("DROP TABLE IF EXISTS events_g")
    engine(EVENTS_DDL.format(table="events_g") + " SETTINGS index_granularity = 8192")
    types: dict[str, str] = dict(
        engine(
            "SELECT name, type FROM system.columns "
            "WHERE database = currentDatabase() AND table = 'events'"
        )
    )
    assert types["ts"] == "DateTime('UTC')"
    assert types["received_at"] == "DateTime('UTC')"
    [(engine_name, sorting_key)] = engine(
        "SELECT engine, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'events_g'"
    )
    assert engine_name == "ReplacingMergeTree"
    assert sorting_key.replace(" ", "") == "project_id,event_name,ts,idempotency_key"


def test_schema_version_table(engine: Engine) -> None:
    _fresh(engine, "schema_version", SCHEMA_VERSION_DDL)
    engine(
        "INSERT INTO schema_version (version, name, applied_at) "
        "SELECT 1, 'init', toDateTime(%(at)s)",
        {"at": 1793512800},
    )
    [(version,)] = engine("SELECT max(version) FROM schema_version")
    assert version == 1
    assert engine("SELECT count() FROM schema_version WHERE version = %(v)s", {"v": 2}) == [(0,)]


# --------------------------------------------------------------------------------------------
# time-zone bucketing
# --------------------------------------------------------------------------------------------

TIMEZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"]


def _transitions(tz: str, year: int) -> list[int]:
    """UTC epoch seconds at which ``tz`` changes its UTC offset during ``year``."""
    zone = ZoneInfo(tz)
    start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())

    def offset(t: int) -> timedelta | None:
        return datetime.fromtimestamp(t, zone).utcoffset()

    found = []
    for t in range(start, end, 3600):
        if offset(t) != offset(t + 3600):
            lo, hi = t, t + 3600
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(t) else (lo, mid)
            found.append(hi)
    return found


def _instants() -> list[int]:
    around: set[int] = set()
    transitions = _transitions("America/New_York", 2026) + _transitions("Australia/Lord_Howe", 2026)
    assert len(transitions) == 4
    for t in transitions:
        for delta in range(-2 * 3600, 2 * 3600 + 1, 900):
            around.update({t + delta - 1, t + delta, t + delta + 1})
    for t in _transitions("Australia/Lord_Howe", 2026):  # the whole local transition day
        around.update(range(t - 24 * 3600, t + 36 * 3600, 1800))
    # Local midnights/month/week boundaries: every 15 minutes (±1 s) across 2026-10-31..11-02 UTC.
    base = int(datetime(2026, 10, 31, tzinfo=UTC).timestamp())
    for step in range(0, 2 * 86400, 900):
        around.update({base + step - 1, base + step, base + step + 1})
    # An ordinary southern-winter day (Lord Howe at +10:30 all day).
    base = int(datetime(2026, 7, 15, tzinfo=UTC).timestamp())
    for step in range(0, 6 * 3600, 900):
        around.update({base + step - 1, base + step})
    around.add(int(datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC).timestamp()))
    return sorted(around)


INSTANTS = _instants()


def _local(t: int, tz: str) -> datetime:
    return datetime.fromtimestamp(t, ZoneInfo(tz))


EXPECTED: dict[str, Callable[[int, str], object]] = {
    "toDate(ts, tz)": lambda t, tz: _local(t, tz).date(),
    "toMonday(ts, tz)": lambda t, tz: (
        _local(t, tz).date() - timedelta(days=_local(t, tz).weekday())
    ),
    "toStartOfMonth(ts, tz)": lambda t, tz: _local(t, tz).date().replace(day=1),
    "toMinute(ts, tz)": lambda t, tz: _local(t, tz).minute,
    "toSecond(ts, tz)": lambda t, tz: _local(t, tz).second,
    # Start of the local hour *at the instant's own UTC offset* (== wall-clock start of hour
    # for every zone whose DST shift is a whole hour).
    "toUInt32(toStartOfHour(ts, tz))": lambda t, tz: (
        t - _local(t, tz).minute * 60 - _local(t, tz).second
    ),
    "toUInt32(ts)": lambda t, tz: t,
    "toUInt32(ts) - toMinute(ts, tz) * 60 - toSecond(ts, tz)": lambda t, tz: (
        t - _local(t, tz).minute * 60 - _local(t, tz).second
    ),
}

# (engine, expression, tz) combinations that are known to be wrong; see the report.
LORD_HOWE = "Australia/Lord_Howe"
_CH18_LH = (
    "ClickHouse 18.16 applies a UTC offset 30 min off (+10:00 instead of +10:30 in April, "
    "+10:30 instead of +11:00 in October) from a Lord Howe DST transition to the end of that "
    "local day: toMinute, toString, toStartOfHour are wrong there; toDate/toMonday/"
    "toStartOfMonth/toSecond are unaffected"
)
_CHDB_LH = (
    "chdb (26.x) toStartOfHour on a Lord Howe transition day counts hours from the transition, "
    "giving buckets at hh:30 local for the rest of that day; toMinute/toSecond are right"
)
KNOWN_WRONG: dict[tuple[str, str, str], str] = {
    ("ch18", "toMinute(ts, tz)", LORD_HOWE): _CH18_LH,
    ("ch18", "toUInt32(toStartOfHour(ts, tz))", LORD_HOWE): _CH18_LH,
    ("ch18", "toUInt32(ts) - toMinute(ts, tz) * 60 - toSecond(ts, tz)", LORD_HOWE): _CH18_LH,
    ("chdb", "toUInt32(toStartOfHour(ts, tz))", LORD_HOWE): _CHDB_LH,
}


@pytest.fixture(scope="module")
def instants_table(engine: Engine) -> str:
    table = "probe_instants"
    _fresh(engine, table, "CREATE TABLE {table} (ts DateTime('UTC')) ENGINE = Memory")
    engine(f"INSERT INTO {table} (ts) SELECT toDateTime(arrayJoin(%(ts)s))", {"ts": INSTANTS})
    assert engine(f"SELECT toUInt32(ts) FROM {table} ORDER BY ts") == [(t,) for t in INSTANTS]
    return table


@pytest.mark.parametrize("tz", TIMEZONES)
@pytest.mark.parametrize("expression", list(EXPECTED))
def test_bucketing(
    engine: Engine, instants_table: str, expression: str, tz: str, request: pytest.FixtureRequest
) -> None:
    reason = KNOWN_WRONG.get((engine.name, expression, tz))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    sql_expr = expression.replace("tz)", f"'{tz}')")
    rows = engine(f"SELECT toUInt32(ts), {sql_expr} FROM {instants_table} ORDER BY ts")
    expected = EXPECTED[expression]
    wrong = [(t, got, expected(t, tz)) for t, got in rows if got != expected(t, tz)]
    assert len(rows) == len(INSTANTS)
    assert not wrong, f"{len(wrong)} wrong, first: " + ", ".join(
        f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S}Z got {g} want {w}"
        for t, g, w in wrong[:3]
    )


def offset_sql(tz: str, lo: int, hi: int, column: str = "toUInt32(ts)") -> str:
    """UTC offset (seconds) of ``tz`` at ``column`` for instants in [lo, hi), as a constant
    ``multiIf`` built from Python's zoneinfo: no reliance on the engine's time-zone tables."""
    zone = ZoneInfo(tz)

    def off(t: int) -> int:
        delta = datetime.fromtimestamp(t, zone).utcoffset()
        assert delta is not None
        return int(delta.total_seconds())

    changes = [
        t
        for year in range(
            datetime.fromtimestamp(lo, UTC).year, datetime.fromtimestamp(hi, UTC).year + 1
        )
        for t in _transitions(tz, year)
        if lo < t < hi
    ]
    if not changes:
        return str(off(lo))
    arms = [f"{column} < {t}, {off(t - 1)}" for t in changes]
    return f"multiIf({', '.join(arms)}, {off(changes[-1])})"


@pytest.mark.parametrize("tz", TIMEZONES)
def test_hour_bucket_with_python_offsets(engine: Engine, instants_table: str, tz: str) -> None:
    """The portable hour bucket: offset from zoneinfo, arithmetic in UTC. Right on both."""
    off = offset_sql(tz, INSTANTS[0], INSTANTS[-1] + 1)
    rows = engine(
        f"SELECT toUInt32(ts), toUInt32(ts) - (toUInt32(ts) + {off}) % 3600 AS hour_start, "
        f"toDate(toDateTime(toUInt32(ts) + {off}), 'UTC') AS local_day "
        f"FROM {instants_table} ORDER BY ts"
    )
    assert [(t, h, d) for t, h, d in rows] == [
        (
            t,
            EXPECTED["toUInt32(ts) - toMinute(ts, tz) * 60 - toSecond(ts, tz)"](t, tz),
            _local(t, tz).date(),
        )
        for t in INSTANTS
    ]


# --------------------------------------------------------------------------------------------
# aggregates over a ReplacingMergeTree with not-yet-merged duplicates
# --------------------------------------------------------------------------------------------

T0 = 1793512800  # 2026-11-01 06:00:00Z == 01:00 EST, just after the New York fall-back


def _utc_text(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def mirrored(**values: Any) -> tuple[Any, ...]:
    """A ClickHouse events row in MIRRORED_COLUMNS order, from values by column name."""
    row = {"project_id": 1, "channel": "", "properties": "", **values}
    return tuple(row[name] for name in MIRRORED_COLUMNS)


EVENTS = [
    {
        "id": i + 1,
        "idempotency_key": f"k{i}",
        "event_name": ("signup", "purchase")[i % 2],
        "user_id": f"u{i % 7}",
        "channel": ("web", "ios")[i % 3 % 2],
        "ts": T0 - 3 * 3600 + i * 600,
        "received_at": T0 + 10_000,
        "properties": "{}",
    }
    for i in range(40)
]
EVENT_ROWS = [mirrored(**event) for event in EVENTS]


def _expected_groups(lo: int, hi: int) -> list[tuple[str, str, int, int]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for event in EVENTS:
        if lo <= event["ts"] < hi:
            groups.setdefault((event["event_name"], event["channel"]), []).append(event["user_id"])
    return [(n, c, len(users), len(set(users))) for (n, c), users in sorted(groups.items())]


@pytest.fixture
def loaded_events(engine: Engine) -> Engine:
    """`events` with three unmerged parts: originals, exact re-deliveries, and re-deliveries
    with a different id/received_at (same sorting key)."""
    _fresh(engine, "events")
    engine("SYSTEM STOP MERGES events")
    engine.insert("events", EVENTS_COLUMNS, list(EVENT_ROWS))
    engine.insert("events", EVENTS_COLUMNS, list(EVENT_ROWS[:10]))
    redelivered = [
        mirrored(**{**e, "id": e["id"] + 1000, "received_at": e["received_at"] + 5})
        for e in EVENTS[5:15]
    ]
    engine.insert("events", EVENTS_COLUMNS, list(redelivered))
    [(parts,)] = engine(
        "SELECT count() FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'events' AND active"
    )
    assert parts >= 3
    return engine


WINDOW = {"from": T0 - 2 * 3600, "to": T0 + 2 * 3600}
WHERE = "ts >= toDateTime(%(from)s) AND ts < toDateTime(%(to)s)"
AGG_QUERIES = {
    "final": (
        "SELECT event_name, channel, count() AS events, uniqExact(user_id) AS users "
        f"FROM events FINAL WHERE {WHERE} GROUP BY event_name, channel "
        "ORDER BY event_name, channel"
    ),
    "group_by_key": (
        "SELECT event_name, channel, count() AS events, uniqExact(user_id) AS users FROM ("
        "SELECT event_name, channel, ts, user_id FROM events "
        f"WHERE {WHERE} GROUP BY idempotency_key, event_name, channel, ts, user_id"
        ") GROUP BY event_name, channel ORDER BY event_name, channel"
    ),
    "limit_1_by": (
        "SELECT event_name, channel, count() AS events, uniqExact(user_id) AS users FROM ("
        "SELECT event_name, channel, ts, user_id FROM events "
        f"WHERE {WHERE} LIMIT 1 BY idempotency_key"
        ") GROUP BY event_name, channel ORDER BY event_name, channel"
    ),
}


@pytest.mark.parametrize("form", list(AGG_QUERIES))
def test_exact_aggregates_under_duplicates(loaded_events: Engine, form: str) -> None:
    expected = _expected_groups(WINDOW["from"], WINDOW["to"])
    assert expected and sum(g[2] for g in expected) > 10
    assert loaded_events(AGG_QUERIES[form], WINDOW) == expected


def test_plain_count_overcounts_until_merged(loaded_events: Engine) -> None:
    sql = f"SELECT count(), uniqExact(idempotency_key) FROM events WHERE {WHERE}"
    [(raw, keys)] = loaded_events(sql, WINDOW)
    assert raw > keys  # duplicates are visible without FINAL / dedup
    loaded_events("SYSTEM START MERGES events")
    loaded_events("OPTIMIZE TABLE events FINAL")
    assert loaded_events(sql, WINDOW) == [(keys, keys)]


def test_final_hour_buckets(loaded_events: Engine) -> None:
    tz = "America/New_York"
    sql = (
        f"SELECT toUInt32(ts) - toMinute(ts, '{tz}') * 60 - toSecond(ts, '{tz}') AS bucket, "
        "count() AS events, uniqExact(user_id) AS users "
        f"FROM events FINAL WHERE {WHERE} AND event_name = %(name)s "
        "GROUP BY bucket ORDER BY bucket"
    )
    got = loaded_events(sql, {**WINDOW, "name": "signup"})
    buckets: dict[int, list[str]] = {}
    for event in EVENTS:
        name, user, ts = event["event_name"], event["user_id"], event["ts"]
        if name == "signup" and WINDOW["from"] <= ts < WINDOW["to"]:
            local = _local(ts, tz)
            buckets.setdefault(ts - local.minute * 60 - local.second, []).append(user)
    assert got == [(b, len(u), len(set(u))) for b, u in sorted(buckets.items())]
    # Two distinct 01:00 buckets on the fall-back night (EDT and EST).
    hours = [_local(b, tz).strftime("%H%z") for b, _, _ in got]
    assert "01-0400" in hours and "01-0500" in hours


# --------------------------------------------------------------------------------------------
# parameters and inserts
# --------------------------------------------------------------------------------------------

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"from": T0}, "ts >= toDateTime(%(from)s)"),
        ({"from": T0}, "ts >= %(from)s"),
        ({"from": T0}, "toUInt32(ts) >= %(from)s"),
        ({"from": _utc_text(T0)}, "ts >= toDateTime(%(from)s, 'UTC')"),
    ],
    ids=["toDateTime(int)", "bare-int", "toUInt32-vs-int", "toDateTime(str,'UTC')"],
)
def test_instant_parameter_forms(loaded_events: Engine, params: dict[str, Any], where: str) -> None:
    want = len({e["idempotency_key"] for e in EVENTS if e["ts"] >= T0})
    got = loaded_events(f"SELECT uniqExact(idempotency_key) FROM events WHERE {where}", params)
    assert got == [(want,)]


def test_driver_datetime_rendering(ch18_client: Client) -> None:
    """clickhouse_driver renders a datetime as a NAIVE string: aware ones are first converted
    to the *server* time zone, naive ones are sent as-is (their meaning then depends on the
    column/server time zone)."""
    context = ch18_client.connection.context
    aware_ny = datetime.fromtimestamp(T0, NY)  # 2026-11-01 01:00 EST
    naive = datetime(2026, 11, 1, 1, 0, 0)
    assert ch18_client.substitute_params("%(x)s", {"x": aware_ny}, context) == (
        "'2026-11-01 06:00:00'"
    )
    assert ch18_client.substitute_params("%(x)s", {"x": naive}, context) == "'2026-11-01 01:00:00'"
    assert ch18_client.substitute_params("%(x)s", {"x": T0}, context) == str(T0)


@pytest.fixture(scope="module")
def kolkata_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """An 18.16 server whose *server* time zone is not UTC."""
    _need_server()
    server = ClickHouseServer(tmp_path_factory.mktemp("ch18ist"), timezone="Asia/Kolkata")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_aware_datetime_param_with_non_utc_server(kolkata_server: ClickHouseServer) -> None:
    client = Client.from_url(kolkata_server.url)
    try:
        [(server_tz,)] = client.execute("SELECT timezone()")
        assert server_tz == "Asia/Kolkata"
        client.execute("DROP TABLE IF EXISTS p")
        client.execute("CREATE TABLE p (ts DateTime('UTC')) ENGINE = Memory")
        client.execute("INSERT INTO p (ts) VALUES", [(T0 + d,) for d in range(-7200, 7200, 600)])
        frm = datetime.fromtimestamp(T0, NY)
        want = [(12,)]
        # The driver renders the aware datetime as IST wall time '2026-11-01 11:30:00'; 18.16
        # parses a string compared with a DateTime('UTC') column in the SERVER zone, so this
        # is right on 18.16 -- but modern ClickHouse parses it in the COLUMN zone (see
        # test_chdb_string_literal_uses_column_zone), so do not rely on it.
        assert (
            client.substitute_params("%(from)s", {"from": frm}, client.connection.context)
            == "'2026-11-01 11:30:00'"
        )
        assert client.execute("SELECT count() FROM p WHERE ts >= %(from)s", {"from": frm}) == want
        assert (
            client.execute("SELECT count() FROM p WHERE ts >= toDateTime(%(from)s)", {"from": frm})
            == want
        )
        # A naive UTC string is therefore WRONG on a non-UTC 18.16 server.
        naive_utc = {"from": datetime(2026, 11, 1, 6, 0, 0)}
        assert client.execute("SELECT count() FROM p WHERE ts >= %(from)s", naive_utc) != want
        # The safe form: epoch seconds.
        assert (
            client.execute("SELECT count() FROM p WHERE ts >= toDateTime(%(from)s)", {"from": T0})
            == want
        )
        # Inserting aware/naive/int datetimes into DateTime('UTC') uses the column zone.
        client.execute("TRUNCATE TABLE p")
        client.execute(
            "INSERT INTO p (ts) VALUES",
            [(datetime.fromtimestamp(T0, UTC),), (frm,), (datetime(2026, 11, 1, 6),), (T0,)],
        )
        assert client.execute("SELECT toUInt32(ts) FROM p") == [(T0,)] * 4
    finally:
        client.disconnect()


def test_chdb_string_literal_uses_column_zone(chdb_engine: Engine) -> None:
    """Modern ClickHouse: a string compared with a DateTime('UTC') column is parsed in the
    column zone, whatever the session zone; toDateTime(string) uses the session zone."""
    _fresh(chdb_engine, "p", "CREATE TABLE {table} (ts DateTime('UTC')) ENGINE = Memory")
    chdb_engine.insert("p", "ts", [(T0 + d,) for d in range(-7200, 7200, 600)])
    ist = " SETTINGS session_timezone = 'Asia/Kolkata'"
    ist_wall = {"from": "2026-11-01 11:30:00"}  # == T0 in IST
    assert chdb_engine("SELECT count() FROM p WHERE ts >= %(from)s" + ist, ist_wall) == [(0,)]
    assert chdb_engine(
        "SELECT count() FROM p WHERE ts >= toDateTime(%(from)s)" + ist, ist_wall
    ) == [(12,)]
    assert chdb_engine(
        "SELECT count() FROM p WHERE ts >= toDateTime(%(from)s)" + ist, {"from": T0}
    ) == [(12,)]


def test_driver_insert_datetimes(ch18_client: Client) -> None:
    ch18_client.execute("DROP TABLE IF EXISTS events_ins")
    ch18_client.execute(EVENTS_DDL.format(table="events_ins"))
    instants = [T0 - 1, T0, T0 + 1, T0 + 3600, 1775314800, 1791041400]
    rows = [
        mirrored(
            id=n, idempotency_key=f"k{n}", event_name="signup", user_id="u", channel="web",
            ts=datetime.fromtimestamp(t, UTC), received_at=datetime.fromtimestamp(t, NY),
        )
        for n, t in enumerate(instants)
    ]  # fmt: skip
    ch18_client.execute(f"INSERT INTO events_ins ({EVENTS_COLUMNS}) VALUES", rows)
    got = ch18_client.execute(
        "SELECT toUInt32(ts), toUInt32(received_at) FROM events_ins ORDER BY id"
    )
    assert got == [(t, t) for t in instants]
    [(ts,)] = ch18_client.execute("SELECT ts FROM events_ins WHERE id = 1")
    assert ts == datetime.fromtimestamp(T0, UTC)  # read back tz-aware for DateTime('UTC')


def test_text_datetime_into_utc_column(engine: Engine) -> None:
    """'YYYY-MM-DD hh:mm:ss' strings into DateTime('UTC') are read in the column zone (UTC)."""
    engine("DROP TABLE IF EXISTS txt")
    engine("CREATE TABLE txt (n UInt32, ts DateTime('UTC')) ENGINE = Memory")
    engine(
        "INSERT INTO txt (n, ts) SELECT 1, %(a)s UNION ALL SELECT 2, %(b)s",
        {"a": _utc_text(T0), "b": _utc_text(T0 - 1)},
    )
    assert engine("SELECT n, toUInt32(ts) FROM txt ORDER BY n") == [(1, T0), (2, T0 - 1)]
    if engine.name == "chdb":
        engine.run(f"INSERT INTO txt (n, ts) VALUES (3, '{_utc_text(T0 + 1)}')", None)
        assert engine("SELECT toUInt32(ts) FROM txt WHERE n = 3") == [(T0 + 1,)]


def test_inline_values_insert_hangs_on_18_16(ch18_server: ClickHouseServer) -> None:
    """Through clickhouse_driver, an INSERT with inline VALUES text never completes on 18.16
    (the server waits for data blocks): use execute("INSERT ... VALUES", rows) instead."""
    client = Client.from_url(ch18_server.url + "?send_receive_timeout=1")
    try:
        client.execute("DROP TABLE IF EXISTS inl")
        client.execute("CREATE TABLE inl (x UInt32) ENGINE = Memory")
        with pytest.raises((TimeoutError, OSError, EOFError)):
            client.execute("INSERT INTO inl (x) VALUES (1)")
    finally:
        client.disconnect()
    client = Client.from_url(ch18_server.url)
    try:
        client.execute("INSERT INTO inl (x) VALUES", [(2,)])
        client.execute("INSERT INTO inl (x) SELECT 3")
        assert client.execute("SELECT x FROM inl ORDER BY x") == [(2,), (3,)]
    finally:
        client.disconnect()


def test_bulk_inserts_columnar_and_by_rows(ch18_client: Client) -> None:
    """The three ways of handing clickhouse-driver a block all store the same rows
    (their speed is bench material, not a test's)."""
    n = 20_000
    ch18_client.execute("DROP TABLE IF EXISTS events_bulk")
    ch18_client.execute(EVENTS_DDL.format(table="events_bulk"))
    epochs = [T0 + i for i in range(n)]
    named: dict[str, list[Any]] = {
        "project_id": [1] * n,
        "id": list(range(n)),
        "idempotency_key": [f"key-{i}" for i in range(n)],
        "event_name": ["signup"] * n,
        "user_id": [f"u{i % 1000}" for i in range(n)],
        "channel": ["web"] * n,
        "ts": [datetime.fromtimestamp(t, UTC) for t in epochs],
        "received_at": [datetime.fromtimestamp(t, UTC) for t in epochs],
        "properties": ["{}"] * n,
    }
    columns = [named[name] for name in MIRRORED_COLUMNS]
    as_epochs = [
        epochs if name in ("ts", "received_at") else named[name] for name in MIRRORED_COLUMNS
    ]
    sql = f"INSERT INTO events_bulk ({EVENTS_COLUMNS}) VALUES"
    ch18_client.execute(sql, columns, columnar=True)
    ch18_client.execute(sql, as_epochs, columnar=True)
    ch18_client.execute(sql, list(zip(*columns, strict=True)))
    assert ch18_client.execute(
        "SELECT count(), min(toUInt32(ts)), max(toUInt32(ts)) FROM events_bulk"
    ) == [(3 * n, T0, T0 + n - 1)]


# --------------------------------------------------------------------------------------------
# the project's own schema and every /metrics query shape, on both engines
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ch18_seam(ch18_client: Client) -> ClickHouseClient:
    """The service's own client seam over the 18.16 connection."""
    return DriverClient(ch18_client)


@pytest.fixture(scope="module")
def chdb_seam(chdb_session: Any, chdb_dir: str) -> Iterator[ClickHouseClient]:
    """The service's own chdb client, on the module's directory (a session of its own)."""
    client = ChdbClient(chdb_dir)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def seam(engine: Engine, request: pytest.FixtureRequest) -> ClickHouseClient:
    result: ClickHouseClient = request.getfixturevalue(f"{engine.name}_seam")
    return result


def _load_project_schema(client: ClickHouseClient) -> None:
    """The service's schema, the events in replicated blocks, and a replay of one block."""
    client.execute("DROP TABLE IF EXISTS events")
    client.execute("DROP TABLE IF EXISTS schema_version")
    assert apply_schema(client) == [v for v, _ in MIGRATIONS]
    assert apply_schema(client) == []  # idempotent on restart
    if reads_final(client):
        client.execute("SYSTEM STOP MERGES events")  # FINAL must be what hides the replay
    first, rest = _replicated(EVENT_ROWS[:10]), _replicated(EVENT_ROWS[10:])
    for rows, start, end in (first, rest, first):  # the first block twice: a replay
        copy_rows(client, rows, start, end)


def _replicated(rows: list[Row]) -> tuple[list[Row], tuple[str, int], tuple[str, int]]:
    """Rows as the replicator fetches them (a month and a txid after the columns) and the
    range they are the block of."""
    ts = MIRRORED_COLUMNS.index("ts")
    fetched = [
        (*row, int(datetime.fromtimestamp(row[ts], UTC).strftime("%Y%m")), "7") for row in rows
    ]
    return fetched, ("7", rows[0][0] - 1), ("7", rows[-1][0])


METRIC_SHAPES = [
    MetricsQuery(
        project_id=1,
        start=datetime.fromtimestamp(T0 - 3 * 86400, UTC),
        end=datetime.fromtimestamp(T0 + 3 * 86400, UTC),
        event_name=name,
        granularity=granularity,  # type: ignore[arg-type]
        group_by=group_by,  # type: ignore[arg-type]
        timezone=tz,
    )
    for granularity in ("hour", "day", "week", "month", "total")
    for group_by in ((), ("channel",), ("event_name",), ("channel", "event_name"))
    for tz in ("UTC", "America/New_York", "Asia/Kathmandu")
    for name in (None, EVENTS[0]["event_name"])
]


def test_project_queries_agree_on_both_engines(
    ch18_seam: ClickHouseClient, chdb_seam: ClickHouseClient
) -> None:
    for client in (ch18_seam, chdb_seam):
        _load_project_schema(client)
    # 18.16 keeps the replayed block until a merge and is read with FINAL; the current
    # engine dropped it (its token was seen) and is read as it is.
    assert reads_final(ch18_seam) is True and reads_final(chdb_seam) is False
    raw = "SELECT count() FROM events"
    assert ch18_seam.execute(raw) == [(len(EVENT_ROWS) + 10,)]
    assert chdb_seam.execute(raw) == [(len(EVENT_ROWS),)]
    for query in METRIC_SHAPES:
        old_sql = metrics_clickhouse.build_sql(query, final=True)
        new_sql = metrics_clickhouse.build_sql(query, final=False)
        for (sql, params), (plain, _) in zip(old_sql, new_sql, strict=True):
            assert "FINAL" not in plain
            old = sorted(ch18_seam.execute(sql, params))
            new = sorted(chdb_seam.execute(plain, params))
            assert old == new, (query, sql)
            assert old and old[0][-2] > 0, (query, sql)
    # Each event counted once: the total equals the distinct keys in range.
    everything = METRIC_SHAPES[-2]
    assert everything.granularity == "total" and everything.event_name is None
    _, (total_sql, params) = metrics_clickhouse.build_sql(everything, final=True)
    _, (plain_sql, _) = metrics_clickhouse.build_sql(everything, final=False)
    expected = len(
        {e["idempotency_key"] for e in EVENTS if params["start"] <= e["ts"] < params["end"]}
    )
    assert ch18_seam.execute(total_sql, params)[0][0] == expected
    assert chdb_seam.execute(plain_sql, params)[0][0] == expected


def test_a_token_names_a_block_whatever_its_content(seam: ClickHouseClient) -> None:
    """The current engine drops a block whose token it has seen, even when the replay's
    content differs (a column added between the crash and the replay, say), and stores
    one with another token; 18.16 has no tokens and stores both."""
    seam.execute("DROP TABLE IF EXISTS events")
    seam.execute("DROP TABLE IF EXISTS schema_version")
    apply_schema(seam)
    rows, start, end = _replicated(EVENT_ROWS[:5])
    copy_rows(seam, rows, start, end)
    changed = [(*row[:-3], '{"changed": 1}', *row[-2:]) for row in rows]  # other properties
    assert changed != rows
    copy_rows(seam, changed, start, end)
    count = "SELECT count() FROM events"
    assert seam.execute(count) == [(5 if seam.version() >= (22, 3) else 10,)]
    copy_rows(seam, rows, start, ("8", 0))  # another range: another block
    assert seam.execute(count) == [(10 if seam.version() >= (22, 3) else 15,)]
    assert block_token(start, end, 202611) != block_token(start, ("8", 0), 202611)


def test_a_replay_inserts_only_the_rows_clickhouse_lacks(seam: ClickHouseClient) -> None:
    """After a failure the replicator asks which ids of the block ClickHouse holds, in
    statements of PRESENT_IDS_CHUNK ids (a statement's size is bounded), and inserts the
    others: exact on 18.16 too, which has no tokens."""
    seam.execute("DROP TABLE IF EXISTS events")
    seam.execute("DROP TABLE IF EXISTS schema_version")
    apply_schema(seam)
    n = PRESENT_IDS_CHUNK * 2 + 500
    # Ids of 13 digits: asked all at once, the statement would be over 256 KiB.
    rows = [
        mirrored(id=10**12 + i, idempotency_key=f"r{i}", event_name="e", user_id=f"u{i % 97}",
                 ts=T0 + i, received_at=T0)
        for i in range(n)
    ]  # fmt: skip
    landed, start, end = _replicated(rows[: PRESENT_IDS_CHUNK + 100])
    copy_rows(seam, landed, start, end)  # what went in before the crash (another range)
    block, start, end = _replicated(rows)
    copy_rows(seam, block, start, end, replay=True)
    assert seam.execute("SELECT count(), uniqExact(id) FROM events") == [(n, n)]


# --------------------------------------------------------------------------------------------
# inserts across partitions
# --------------------------------------------------------------------------------------------


def test_current_clickhouse_refuses_an_insert_over_100_partitions(chdb_engine: Engine) -> None:
    """Why the replicator inserts month by month: one block of 101 months is refused by
    current ClickHouse (code 252, max_partitions_per_insert_block), its split is not."""
    _fresh(chdb_engine, "events_months")
    start = datetime(2015, 1, 15, tzinfo=UTC)
    rows = [
        mirrored(id=n, idempotency_key=f"k{n}", event_name="e", user_id="u",
                 ts=start + timedelta(days=31 * n), received_at=start)
        for n in range(101)
    ]  # fmt: skip
    as_ints = [tuple(int(v.timestamp()) if isinstance(v, datetime) else v for v in r) for r in rows]
    with pytest.raises(RuntimeError, match=r"252|TOO_MANY_PARTS|partitions"):
        chdb_engine.insert("events_months", EVENTS_COLUMNS, as_ints)
    columns = [list(column) for column in zip(*as_ints, strict=True)]
    months = [
        ts.year * 100 + ts.month for ts in (row[MIRRORED_COLUMNS.index("ts")] for row in rows)
    ]
    blocks = split_by_month(columns, months)
    assert len(blocks) == 101
    for block in blocks.values():
        chdb_engine.insert("events_months", EVENTS_COLUMNS, list(zip(*block, strict=True)))
    assert chdb_engine("SELECT count() FROM events_months") == [(101,)]


def canonical_content(row: dict[str, Any]) -> str:
    """verify's canonical text of a row, by its definition (docs/architecture.md): numbers
    and times (whole seconds since 1970) in decimal, strings after their length in bytes,
    comma-separated in MIRRORED_COLUMNS order."""
    parts = []
    for name in MIRRORED_COLUMNS:
        value = row[name]
        parts.append(f"{len(value.encode())}:{value}" if isinstance(value, str) else str(value))
    return ",".join(parts)


CONTENT_ROWS = [
    {"project_id": 1, "id": n + 1, "idempotency_key": key, "event_name": "e",
     "user_id": user, "channel": channel, "ts": 1767268800 + n, "received_at": 1767268801,
     "properties": properties}
    for n, (key, user, channel, properties) in enumerate([
        ("a", "u", "", ""),
        ("b", "u,1:x", "web", '{"a": 1, "b": [1, 2]}'),
        ("ключ", "пользователь", "ios", '{"s": "café", "n": 0.0025}'),
        ("k" * 200, "", "", '{"deep": {"x": null}}'),
    ])
]  # fmt: skip


def test_verify_content_checksum_is_the_md5_of_the_canonical_text(engine: Engine) -> None:
    """event-metrics verify: ClickHouse's row checksum is md5 of the canonical text, the
    one PostgreSQL computes (tests/integration/test_replication.py checks PostgreSQL's)."""
    import hashlib

    _fresh(engine, "events")
    engine.insert("events", EVENTS_COLUMNS, [mirrored(**row) for row in CONTENT_ROWS])
    digests = {
        row["idempotency_key"]: hashlib.md5(canonical_content(row).encode()).digest()
        for row in CONTENT_ROWS
    }
    per_row = engine(verify.CLICKHOUSE_KEYS, {"project_id": 1, "day": date(2026, 1, 1),
                                              "event_name": "e"})  # fmt: skip
    assert dict(per_row) == {key: digest.hex() for key, digest in digests.items()}
    [(project, day, name, count, first, second)] = engine(verify.CLICKHOUSE_SUMMARY)
    assert (project, str(day), name, count) == (1, "2026-01-01", "e", len(CONTENT_ROWS))
    assert first == sum(int.from_bytes(d[:4], "big") for d in digests.values())
    assert second == sum(int.from_bytes(d[4:8], "big") for d in digests.values())
