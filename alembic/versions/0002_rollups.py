"""pre-aggregated rollups with exact user bitmaps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Dense integer ids for user_id strings: what the roaring bitmaps hold.
    op.execute(
        """
        CREATE TABLE user_ids (
            uid     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id text    NOT NULL,
            CONSTRAINT user_ids_user_id_key UNIQUE (user_id)
        )
        """
    )
    # One row per UTC hour (grain 0) or UTC day (grain 1), per dimension level:
    # 0 = (event_name, channel), 1 = event_name only, 2 = channel only, 3 = neither.
    # A rolled-away dimension is stored as ''; the level says which one it is.
    # users is a serialized roaring bitmap of uids; users_count its cardinality.
    op.execute(
        """
        CREATE TABLE rollups (
            grain       smallint    NOT NULL,
            level       smallint    NOT NULL,
            bucket      timestamptz NOT NULL,
            event_name  text        NOT NULL,
            channel     text        NOT NULL,
            events      bigint      NOT NULL,
            users_count integer     NOT NULL,
            users       bytea       NOT NULL,
            PRIMARY KEY (grain, level, event_name, bucket, channel)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE rollups")
    op.execute("DROP TABLE user_ids")
