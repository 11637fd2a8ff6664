"""A new column, `country`, added to a copy of the package the way docs/architecture.md
says ("Adding a column or a dimension"), for the tests that prove nothing else has to change.

The edits, and nothing more:
1. schema.py: one line of `Row`, and the name in `DIMENSIONS`;
2. a migration: an alembic revision adding the column to `events` and `rollups`;
3. the wire format (clients send it): a field of `EventIn`, and its keyword in `events._to_row`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCHEMA_EDITS = [
    ("    properties: Annotated[str | None, Types(\"jsonb\", \"String\")]  # JSON text, as sent\n",
     "    properties: Annotated[str | None, Types(\"jsonb\", \"String\")]  # JSON text, as sent\n"
     "    country: Annotated[str, Types(\"text\", \"String\")] = \"\"\n"),
    ('DIMENSIONS: tuple[str, ...] = ("channel", "event_name")',
     'DIMENSIONS: tuple[str, ...] = ("channel", "event_name", "country")'),
]  # fmt: skip
SENT_AT = '    sent_at: Annotated[Instant, msgspec.Meta(examples=["2026-11-01T09:15:03Z"])] | None'
WIRE_EDITS = [
    (SENT_AT + " = None\n", SENT_AT + " = None\n    country: Channel | None = None\n"),
    ("        properties=properties,\n    )",
     "        properties=properties, country=event.country or \"\",\n    )"),
]  # fmt: skip
MIGRATION = '''"""events.country, a dimension

Revision ID: 9001
Revises: {head}
"""

from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default fills the existing rows without rewriting the table; existing
    # rollups keep their levels (their events have country ''), and rebuild-rollups adds
    # the levels that roll country away.
    op.execute("ALTER TABLE events ADD COLUMN country text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE rollups ADD COLUMN country text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE rollups DROP CONSTRAINT rollups_pkey")
    op.execute(
        "ALTER TABLE rollups ADD CONSTRAINT rollups_pkey "
        "PRIMARY KEY (project_id, grain, level, event_name, bucket, channel, country)"
    )
'''


def _edit(path: Path, edits: list[tuple[str, str]]) -> None:
    text = path.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{path.name} no longer holds {old!r}: update the edit"
        text = text.replace(old, new)
    path.write_text(text)


def copy_package(into: Path, *, wire: bool = True) -> Path:
    """Copy the package (as `into/src/event_metrics`), alembic.ini and alembic/ into a
    folder, then add the column; return the folder to put on PYTHONPATH (`into/src`)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    source = into / "src"
    shutil.copytree(ROOT / "src" / "event_metrics", source / "event_metrics")
    caches = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "alembic", into / "alembic", ignore=caches)
    shutil.copy(ROOT / "alembic.ini", into / "alembic.ini")
    _edit(source / "event_metrics" / "schema.py", SCHEMA_EDITS)
    if wire:
        _edit(source / "event_metrics" / "events.py", WIRE_EDITS)
    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    (into / "alembic" / "versions" / "9001_country.py").write_text(MIGRATION.format(head=head))
    return source
