"""Rows as the writers take them, for the tests that bypass HTTP: built by field name."""

from __future__ import annotations

from datetime import datetime

from event_metrics.schema import Row


def row(key: str, ts: datetime, received_at: datetime | None = None, project_id: int = 1) -> Row:
    """A row of event 'e' by user 'u', without channel or properties."""
    return Row(
        project_id=project_id,
        idempotency_key=key,
        event_name="e",
        user_id="u",
        channel="",
        ts=ts,
        received_at=ts if received_at is None else received_at,
        properties=None,
    )
