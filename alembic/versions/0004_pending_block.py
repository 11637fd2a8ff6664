"""replication_state remembers the block a follower is writing (its pending range)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

The replicator saves the end of the block it is about to insert into ClickHouse before
inserting it, and clears it with the checkpoint after. A crash in between replays exactly
that range, the same rows in the same blocks with the same deduplication tokens, which is
what makes the replay a no-op (docs/architecture.md, "Exactly-once into ClickHouse").
NULL: no block in flight.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE replication_state ADD COLUMN pending_txid xid8, "
        "ADD COLUMN pending_last_id bigint"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE replication_state DROP COLUMN pending_txid, DROP COLUMN pending_last_id"
    )
