"""One definition of the stored event: every column list and dimension list follows it.

The last test adds a dimension the way docs/architecture.md says (tests/new_column.py) to
a copy of the package, and checks that every statement built from the schema now carries
it. tests/integration/test_new_column.py does the same end to end: ingest, replicate and
answer /metrics grouped by the new column.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec

from event_metrics import clickhouse, replicator, writer
from event_metrics.schema import COLUMNS, DIMENSIONS, LEVELS, MIRRORED_COLUMNS, Row, level_for
from new_column import copy_package


def test_every_column_list_is_the_schemas() -> None:
    for statement in (writer.CREATE_STAGING, writer.INSERT_FROM_STAGING, writer.INSERT_UNNEST):
        for column in COLUMNS:
            assert column in statement, (column, statement)
    for statement in (replicator.FETCH_BATCH, clickhouse.EVENTS_DDL, clickhouse.INSERT):
        for column in MIRRORED_COLUMNS:
            assert column in statement, (column, statement)
    assert ("ord", *COLUMNS) == writer.STAGING_COLUMNS
    assert tuple(field.name for field in msgspec.structs.fields(Row)) == COLUMNS


def test_levels_are_every_subset_of_the_dimensions_with_stable_numbers() -> None:
    assert len(LEVELS) == 2 ** len(DIMENSIONS)
    assert {level.dimensions for level in LEVELS} == {
        frozenset(), frozenset({"channel"}), frozenset({"event_name"}),
        frozenset({"channel", "event_name"}),
    }  # fmt: skip
    # The numbers stored in existing rollups rows.
    assert level_for({"channel", "event_name"}).number == 0
    assert level_for({"event_name"}).number == 1
    assert level_for({"channel"}).number == 2
    assert level_for(set()).number == 3


PROBE = """
import json
from event_metrics import clickhouse, metrics, metrics_rollup, replicator, rollups, writer
from event_metrics.schema import LEVELS, Row, level_for
statements = {
    "staging": writer.CREATE_STAGING, "copy insert": writer.INSERT_FROM_STAGING,
    "unnest insert": writer.INSERT_UNNEST, "replicator": replicator.FETCH_BATCH,
    "clickhouse table": clickhouse.EVENTS_DDL, "clickhouse insert": clickhouse.INSERT,
    "rollup fold": rollups.AGGREGATE_BLOCK, "rollup read": rollups.READ_ROLLUPS,
    "rollup write": rollups.WRITE_ROLLUPS, "rollup answer": metrics_rollup.ROLLUP_COLUMNS,
    "rollup bitmaps": metrics_rollup.FETCH_BITMAPS,
}
query = metrics.parse_query(project_id=1, start="2026-11-01T00:00:00Z", end="2026-11-02T00:00:00Z",
    event_name=None, granularity="hour", group_by="country,channel", timezone="UTC",
    max_window_days=400)
print(json.dumps({
    "missing": [name for name, sql in statements.items() if "country" not in sql],
    "levels": len(LEVELS),
    "country level": level_for({"country"}).number,
    "group_by": list(query.group_by),
    "row": list(Row.__struct_fields__),
}))
"""


def test_adding_a_dimension_is_one_entry_in_the_schema(tmp_path: Path) -> None:
    source = copy_package(tmp_path, wire=False)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["missing"] == []
    assert result["levels"] == 8
    assert result["country level"] == 3  # channel and event_name rolled away: bits 0 and 1
    assert result["group_by"] == ["country", "channel"]
    assert result["row"][-1] == "country"
