"""event-metrics import: the endpoints' checks and mappings, the writer's dedup, refused
lines named by number, nothing stored with --all-or-nothing, and one-line errors with
exit status 2 for what cannot be."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_sdk import FIXTURES

from conftest import ClientFactory, Keys
from event_metrics import importer
from event_metrics.import_formats import LineDecoder, Source
from event_metrics.settings import Settings

ROWS = """
SELECT project_id, idempotency_key, event_name, user_id, channel, ts, properties::text
FROM events WHERE project_id = $1 ORDER BY idempotency_key
"""
# A checksum of every stored key and what it holds, per project.
CHECKSUM = """
SELECT count(*), md5(string_agg(concat_ws('|', idempotency_key, event_name, user_id, channel,
       ts, properties::text), ',' ORDER BY idempotency_key))
FROM events WHERE project_id = $1
"""


def run_cli(
    database_url: str, *args: str, cwd: Path | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENT_METRICS_")}
    env["EVENT_METRICS_DATABASE_URL"] = database_url
    env |= {f"EVENT_METRICS_{name.upper()}": value for name, value in variables.items()}
    return subprocess.run(
        [sys.executable, "-m", "event_metrics.cli", *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


async def import_file(
    database_url: str, path: Path, project_id: int, source: Source = "native", **options: Any
) -> importer.ImportReport:
    decoder = LineDecoder(source, Settings.build().ingest, project_id=project_id)
    return await importer.import_file(
        database_url, path, decoder, batch_rows=options.pop("batch_rows", 7), **options
    )


def event(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_name": "view",
        "user_id": f"u{n % 7}",
        "timestamp": f"2026-10-{1 + n % 28:02d}T10:00:{n % 60:02d}.5+02:00",
        "idempotency_key": f"k{n:03d}",
        **fields,
    }


def write_lines(path: Path, lines: list[str], *, newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


BROKEN = {
    5: '{"event_name": "view", "user_id": ',  # cut short
    12: json.dumps({"event_name": "view", "idempotency_key": "no-user"}),
    20: "[1, 2]",
    23: json.dumps({**event(23), "timestamp": "2999-01-01T00:00:00Z"}),  # too far ahead
}


def broken_file(tmp_path: Path) -> tuple[Path, set[str]]:
    """30 lines: four refused, a blank one, the last without its newline."""
    lines, good = [], set()
    for number in range(1, 31):
        if number in BROKEN:
            lines.append(BROKEN[number])
        elif number == 9:
            lines.append("   ")
        else:
            lines.append(json.dumps(event(number)))
            good.add(f"k{number:03d}")
    return write_lines(tmp_path / "events.ndjson", lines, newline_at_end=False), good


async def keys_of(db: asyncpg.Connection, project_id: int) -> set[str]:
    rows = await db.fetch("SELECT idempotency_key FROM events WHERE project_id = $1", project_id)
    return {row[0] for row in rows}


async def test_refused_lines_are_named_by_number_and_every_other_line_is_stored(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    path, good = broken_file(tmp_path)
    done = run_cli(database_url, "import", "--project", "default", str(path),
                   import_batch_rows="4")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    for number in BROKEN:
        assert f"\nline {number}: " in "\n" + done.stderr, done.stderr
    assert "line 9:" not in done.stderr  # a blank line is no event
    assert "no-user" not in done.stderr  # the reason, not the line, is shown
    assert "user_id" in done.stderr and "ahead of the server clock" in done.stderr
    assert "29 events read, 25 stored, 0 already stored, 4 refused" in done.stderr
    assert await keys_of(db, keys.default.project_id) == good


async def test_all_or_nothing_stores_nothing_when_a_line_is_refused(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    path, _ = broken_file(tmp_path)
    done = run_cli(database_url, "import", "--project", "default", "--all-or-nothing", str(path))
    assert done.returncode == 1, done.stderr
    assert "line 5: " in done.stderr and "nothing was stored" in done.stderr
    assert await keys_of(db, keys.default.project_id) == set()

    clean = write_lines(tmp_path / "clean.ndjson", [json.dumps(event(n)) for n in range(40)])
    done = run_cli(database_url, "import", "--project", "default", "--all-or-nothing", str(clean))
    assert done.returncode == 0, done.stderr
    assert len(await keys_of(db, keys.default.project_id)) == 40


BAD_WINDOW = ["--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "--project", "nope", "FILE"], "no project named 'nope'"),
        (["import", "--project", "default", "missing.ndjson"], "no file"),
        (["export", "--project", "nope", "out.ndjson"], "no project named 'nope'"),
        (["export", "--project", "default", *BAD_WINDOW, "out.ndjson"], "to must be after from"),
        (["export", "--project", "default", "--from", "monday", "out.ndjson"], "from is not"),
    ],
)
def test_what_cannot_be_is_one_line_and_exit_status_2(
    database_url: str, keys: Keys, tmp_path: Path, args: list[str], message: str
) -> None:
    path = write_lines(tmp_path / "one.ndjson", [json.dumps(event(1))])
    args = [str(path) if arg == "FILE" else arg for arg in args]
    # In tmp_path: a refused export must leave no file behind.
    done = run_cli(database_url, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("event-metrics: ") and message in line, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.ndjson"]


async def test_importing_again_stores_nothing_new(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    lines = [json.dumps(event(n, properties={"n": n, "x": [1.0, "a"]})) for n in range(100)]
    lines += [json.dumps({"event_name": "derived", "user_id": "u", "timestamp":
                          f"2026-10-02T00:00:{n:02d}Z"}) for n in range(10)]  # fmt: skip
    lines.append(lines[3])  # the same event twice in one file
    path = write_lines(tmp_path / "events.ndjson", lines)
    project = keys.default.project_id
    first = await import_file(database_url, path, project)
    assert (first.events, first.stored, first.duplicates, first.rejected) == (111, 110, 1, 0)
    before = await db.fetchrow(CHECKSUM, project)
    again = await import_file(database_url, path, project, connections=3)
    assert (again.events, again.stored, again.duplicates, again.rejected) == (111, 0, 111, 0)
    assert await db.fetchrow(CHECKSUM, project) == before
    assert before[0] == 110


async def test_gzip_files_of_several_members(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    first = gzip.compress("".join(json.dumps(event(n)) + "\n" for n in range(10)).encode())
    second = gzip.compress("".join(json.dumps(event(n)) + "\n" for n in range(10, 25)).encode())
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(first + second)  # what `cat a.gz b.gz` makes
    report = await import_file(database_url, path, keys.default.project_id)
    assert (report.events, report.stored) == (25, 25)


# --- SDK exports: mapped as their endpoints map them ----------------------------------------


def recorded(prefix: str) -> list[dict[str, Any]]:
    (path,) = [p for p in FIXTURES if p.name.startswith(prefix)]
    messages: list[dict[str, Any]] = json.loads(path.read_text())["decoded_json"]["batch"]
    return messages


SDK_CASES = {
    "segment": ("analytics-python__batch", "/v1/batch", "writeKey"),
    "rudderstack": ("rudder-sdk-python__batch", "/v1/batch", "writeKey"),
    "posthog": ("posthog-python__batch", "/batch/", "api_key"),
}


@pytest.mark.parametrize("source", list(SDK_CASES))
async def test_sdk_exports_are_stored_as_their_endpoint_stores_them(
    make_client: ClientFactory, database_url: str, db: asyncpg.Connection, keys: Keys,
    tmp_path: Path, source: Source,
) -> None:  # fmt: skip
    prefix, path, key_field = SDK_CASES[source]
    messages = recorded(prefix)
    async with make_client() as client:
        # No sentAt: the endpoint then takes the times as given, as an import does.
        response = await client.post(
            path, json={"batch": messages, key_field: keys.default.write}, auth=None
        )
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(messages)
    project = keys.default.project_id
    by_http = await db.fetch(ROWS, project)
    await db.execute("TRUNCATE events")
    file = write_lines(tmp_path / "export.ndjson", [json.dumps(m) for m in messages])
    report = await import_file(database_url, file, project, source)
    assert (report.stored, report.rejected) == (len(messages), 0)
    assert await db.fetch(ROWS, project) == by_http


async def test_a_segment_export_keeps_its_corrected_time(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    # As Segment archives a message: its timestamp already corrected for the device's
    # clock, with the client's originalTimestamp, sentAt and Segment's receivedAt beside.
    message = {
        "type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m-1",
        "timestamp": "2025-03-01T10:00:00.000Z", "originalTimestamp": "2025-03-01T10:05:00Z",
        "sentAt": "2025-03-01T10:05:03Z", "receivedAt": "2025-03-01T10:00:03.000Z",
        "properties": {"total": 30}, "context": {"library": {"name": "analytics.js"}},
    }  # fmt: skip
    file = write_lines(tmp_path / "segment.ndjson", [json.dumps(message)])
    report = await import_file(database_url, file, keys.default.project_id, "segment")
    assert report.stored == 1
    row = await db.fetchrow(ROWS, keys.default.project_id)
    assert row["ts"] == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert (row["event_name"], row["user_id"], row["channel"]) == (
        "Order Completed", "u1", "analytics.js"
    )  # fmt: skip
    kept = json.loads(row["properties"])
    assert kept["total"] == 30
    assert kept["$segment"]["receivedAt"] == "2025-03-01T10:00:03.000Z"
    assert kept["$segment"]["originalTimestamp"] == "2025-03-01T10:05:00Z"


async def test_a_posthog_parquet_export(
    database_url: str, db: asyncpg.Connection, keys: Keys, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    # PostHog's S3 batch export of events, in Parquet: JSON as text, times as UTC.
    table = pa.table({
        "uuid": ["0193a1f2-5b6c-7d8e-9f00-a1b2c3d4e5f6", "0193a1f2-5b6c-7d8e-9f00-a1b2c3d4e5f7"],
        "event": ["$pageview", "signed_up"],
        "distinct_id": ["d1", "d2"],
        "person_id": ["p1", "p2"],
        "properties": ['{"$lib": "web", "$current_url": "https://x/"}', '{"plan": "pro"}'],
        "elements_chain": ["", ""],
        "timestamp": pa.array([datetime(2025, 5, 1, 8, 0, 0, 123456, tzinfo=UTC),
                               datetime(2025, 5, 2, 9, tzinfo=UTC)],
                              type=pa.timestamp("us", tz="UTC")),
        "created_at": pa.array([datetime(2025, 5, 1, 8, 0, 1, tzinfo=UTC)] * 2,
                               type=pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    path = tmp_path / "posthog.parquet"
    parquet.write_table(table, path)
    report = await import_file(database_url, path, keys.default.project_id, "posthog")
    assert (report.stored, report.rejected) == (2, 0)
    first, second = await db.fetch(
        ROWS.replace("ORDER BY idempotency_key", "ORDER BY ts"), keys.default.project_id
    )
    assert (first["event_name"], first["user_id"], first["channel"]) == ("$pageview", "d1", "web")
    assert first["idempotency_key"] == "0193a1f2-5b6c-7d8e-9f00-a1b2c3d4e5f6"
    assert first["ts"] == datetime(2025, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)
    kept = json.loads(first["properties"])
    assert kept["$current_url"] == "https://x/"
    assert kept["$posthog"]["person_id"] == "p1"
    assert json.loads(second["properties"])["plan"] == "pro"


async def test_parquet_export_and_import_through_the_cli(
    make_client: ClientFactory, database_url: str, db: asyncpg.Connection, keys: Keys,
    tmp_path: Path,
) -> None:  # fmt: skip
    pytest.importorskip("pyarrow")
    sent = [event(n, properties={"n": n, "pi": 3.14159, "s": "é\t"}) for n in range(50)]
    sent += [event(n, channel="ios") for n in range(50, 60)]
    async with make_client() as client:
        assert (await client.post("/events", json=sent)).status_code == 200
    out = tmp_path / "all.parquet"
    done = run_cli(database_url, "export", "--project", "default", "--format", "parquet", str(out))
    assert done.returncode == 0, done.stderr
    done = run_cli(database_url, "import", "--project", "other", str(out))
    assert done.returncode == 0, done.stderr
    assert "60 events read, 60 stored" in done.stderr
    source = await db.fetch(ROWS, keys.default.project_id)
    copy = await db.fetch(ROWS, keys.other.project_id)
    assert [tuple(r)[1:] for r in copy] == [tuple(r)[1:] for r in source]
