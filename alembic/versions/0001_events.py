"""events table, replication checkpoint

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # channel is '' when the client sent none: a NOT NULL column keeps GROUP BY identical
    # in PostgreSQL and ClickHouse (where Nullable columns are slow).
    # txid is the inserting transaction's id; the replicator uses it as a gap-free
    # watermark (docs/architecture.md).
    op.execute(
        """
        CREATE TABLE events (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            idempotency_key text        NOT NULL,
            event_name      text        NOT NULL,
            user_id         text        NOT NULL,
            channel         text        NOT NULL DEFAULT '',
            ts              timestamptz NOT NULL,
            received_at     timestamptz NOT NULL,
            properties      jsonb,
            txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
            CONSTRAINT events_idempotency_key_key UNIQUE (idempotency_key)
        )
        """
    )
    op.execute("CREATE INDEX events_event_name_ts_idx ON events (event_name, ts)")
    op.execute("CREATE INDEX events_ts_idx ON events (ts)")
    op.execute("CREATE INDEX events_txid_id_idx ON events (txid, id)")
    op.execute(
        """
        CREATE TABLE replication_state (
            target     text        PRIMARY KEY,
            txid       xid8        NOT NULL,
            last_id    bigint      NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE replication_state")
    op.execute("DROP TABLE events")
