"""How current the data a /metrics answer was read from is: the `freshness` object of
every answer (docs/api.md, "Freshness").

PostgreSQL answers are complete: the raw table holds every committed event, and a rollup
answer reads the events the rollups have not folded yet from the raw table. A ClickHouse
answer lacks what the replicator had not copied: its last measurement, taken at most
about a second before (plus the status file's age), is reported with its time rather
than measured again for every answer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

Source = Literal["raw", "rollup", "clickhouse"]


class Freshness(msgspec.Struct, kw_only=True):
    """How current the data an answer was read from is, as of when."""

    source: Annotated[Source, msgspec.Meta(examples=["clickhouse"])]
    # Committed events the source lacked at as_of: 0 for PostgreSQL; null when unknown.
    lag_rows: Annotated[int | None, msgspec.Meta(examples=[125000])]
    lag_rows_capped: Annotated[bool, msgspec.Meta(examples=[True])]
    lag_seconds: Annotated[float | None, msgspec.Meta(examples=[12.4])]
    # The state of the follower that fills the source (replication, rollups); null: raw.
    state: Annotated[str | None, msgspec.Meta(examples=["catching_up"])]
    as_of: Annotated[str | None, msgspec.Meta(examples=["2026-11-01T09:15:03.120+00:00"])]
    age_s: Annotated[float | None, msgspec.Meta(examples=[0.6])]
    # Rollup answers: events not folded into the rollups yet, read from the raw table.
    rollup_lag_rows: Annotated[int | None, msgspec.Meta(examples=[None])] = None


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def complete(source: Source, *, state: str | None = None) -> Freshness:
    """An answer from PostgreSQL, which holds every committed event: no lag, as of now."""
    return Freshness(
        source=source,
        lag_rows=0,
        lag_rows_capped=False,
        lag_seconds=0.0,
        state=state,
        as_of=_moment(time.time()),
        age_s=0.0,
    )


def behind(source: Source, status: dict[str, Any] | None) -> Freshness:
    """An answer from a copy, as far behind as its follower's last measurement says
    (`status` as /health shows it; None: no follower here, so the lag is unknown)."""
    status = status or {}
    age_s = status.get("lag_age_s")
    return Freshness(
        source=source,
        lag_rows=status.get("lag_rows"),
        lag_rows_capped=bool(status.get("lag_rows_capped")),
        lag_seconds=status.get("lag_seconds"),
        state=status.get("state"),
        as_of=None if age_s is None else _moment(time.time() - age_s),
        age_s=age_s,
    )
