"""GET /metrics: the query a request asks for, and the response both engines produce."""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo

import msgspec

from event_metrics.buckets import bucket_start
from event_metrics.freshness import Freshness
from event_metrics.schema import DIMENSIONS

Granularity = Literal["hour", "day", "week", "month", "total"]
Dimension = str  # one of schema.DIMENSIONS
GRANULARITIES: tuple[str, ...] = get_args(Granularity)

T = TypeVar("T")

# A '+' in a query string that was not percent-encoded arrives as a space.
_UNENCODED_PLUS = re.compile(r"(T\d\d:\d\d:\d\d) (\d\d:?\d\d)$")


class InvalidParameter(Exception):
    """A /metrics parameter is missing or wrong; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class AnswerTooLarge(Exception):
    """The answer would have more series rows than one response may hold."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(
            f"the answer has more than {max_rows} series rows (EVENT_METRICS_MAX_SERIES_ROWS): "
            "narrow the window, use a coarser granularity or group by fewer dimensions"
        )


def check_row_count(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise AnswerTooLarge(max_rows)


class BackendUnavailable(Exception):
    """The engine that should answer is unreachable or too slow right now."""


class MetricsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A validated /metrics request: the project, the half-open window [start, end) and
    its shape."""

    project_id: int
    start: datetime
    end: datetime
    event_name: str | None
    granularity: Granularity
    group_by: tuple[Dimension, ...]
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Totals(msgspec.Struct):
    events: int
    unique_users: int


Rfc3339 = Annotated[str, msgspec.Meta(examples=["2026-11-01T01:00:00+01:00"])]
# A series row: where its bucket starts, one key per group_by dimension, the counts.
ROW_EXAMPLE = {"bucket_start": "2026-11-01T10:00:00+01:00", "channel": "web", "events": 2,
               "unique_users": 2}  # fmt: skip


class MetricsResponse(msgspec.Struct, kw_only=True):
    from_: Rfc3339 = msgspec.field(name="from")
    to: Rfc3339
    event_name: str | None
    granularity: str
    group_by: list[str]
    timezone: Annotated[str, msgspec.Meta(examples=["Europe/Berlin"])]
    backend: str
    total: Totals
    series: Annotated[list[dict[str, Any]], msgspec.Meta(examples=[[ROW_EXAMPLE]])]
    freshness: Freshness


# What an engine returns for a series row: (bucket, *dimension values, events, unique_users).
# bucket is an aware datetime for "hour", a local date for day/week/month, None for total.
SeriesRow = Sequence[Any]


def parse_query(
    *,
    project_id: int,
    start: str | None,
    end: str | None,
    event_name: str | None,
    granularity: str | None,
    group_by: str | None,
    timezone: str | None,
    max_window_days: int,
) -> MetricsQuery:
    """Validate raw query parameters; raise InvalidParameter naming the first bad one."""
    start_at = _parse_instant("from", start)
    end_at = _parse_instant("to", end)
    if end_at <= start_at:
        raise InvalidParameter("to", "to must be after from")
    if end_at - start_at > timedelta(days=max_window_days):
        raise InvalidParameter(
            "to", f"the window from..to is longer than the maximum of {max_window_days} days"
        )
    if event_name is not None and not 0 < len(event_name) <= 200:
        raise InvalidParameter("event_name", "event_name must be 1 to 200 characters")
    if event_name is not None and "\x00" in event_name:
        raise InvalidParameter("event_name", "event_name must not contain NUL characters")
    granularity = granularity or "total"
    if granularity not in GRANULARITIES:
        raise InvalidParameter(
            "granularity", f"granularity must be one of {', '.join(GRANULARITIES)}"
        )
    dimensions: list[Dimension] = []
    for part in (group_by or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part not in DIMENSIONS:
            raise InvalidParameter(
                "group_by", f"group_by must be a comma-separated subset of {', '.join(DIMENSIONS)}"
            )
        if part in dimensions:
            raise InvalidParameter("group_by", f"group_by names {part} twice")
        dimensions.append(part)
    zone = timezone or "UTC"
    if zone not in iana_zones():
        raise InvalidParameter(
            "timezone", f"unknown time zone {zone[:60]!r}: use an IANA name such as Europe/Berlin"
        )
    return MetricsQuery(
        project_id=project_id,
        start=start_at,
        end=end_at,
        event_name=event_name,
        granularity=granularity,  # type: ignore[arg-type]
        group_by=tuple(dimensions),
        timezone=zone,
    )


@functools.cache
def iana_zones() -> frozenset[str]:
    """Zone names of the IANA database (the `tzdata` package's list): the same on every
    host, unlike the files under /usr/share/zoneinfo (localtime, posixrules, right/...)."""
    listing = importlib.resources.files("tzdata").joinpath("zones").read_text("utf-8")
    return frozenset(line.strip() for line in listing.splitlines() if line.strip()) - {"Factory"}


def _parse_instant(name: str, value: str | None) -> datetime:
    if not value:
        raise InvalidParameter(name, f"{name} is required (RFC 3339, e.g. 2026-11-01T00:00:00Z)")
    text = _UNENCODED_PLUS.sub(r"\1+\2", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(name, f"{name} is not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidParameter(name, f"{name} needs a UTC offset or Z: {value!r}")
    if parsed.microsecond:
        # ClickHouse stores whole seconds; whole-second bounds keep both engines identical.
        raise InvalidParameter(name, f"{name} must be a whole second: {value!r}")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is valid RFC 3339, but not in UTC
        raise InvalidParameter(name, f"{name} must be between 1970 and 2105") from None
    if parsed.year < 1970 or parsed.year > 2105:
        raise InvalidParameter(name, f"{name} must be between 1970 and 2105")
    return parsed


def format_instant(moment: datetime) -> str:
    """RFC 3339 with the UTC offset, seconds precision."""
    return moment.isoformat(timespec="seconds")


# Answers with more rows than this are built in a worker thread: still under the GIL, but
# the event loop gets it back every few milliseconds, so ingest requests keep moving
# while a 30,000-row answer (~100 ms of Python) is assembled.
OFF_LOOP_ROWS = 2_000


async def off_the_loop(build: Callable[[], T], rows: int) -> T:
    """Run build() here when the answer is small, in a worker thread when it is large."""
    if rows < OFF_LOOP_ROWS:
        return build()
    return await asyncio.to_thread(build)


@functools.cache
def _series_builder(
    names: tuple[str, ...],
) -> Callable[[list[tuple[Any, ...]]], list[dict[str, Any]]]:
    """A function turning sorted (instant, groups, text, events, users) tuples into series
    rows with one key per dimension in `names`.

    Generated once per group_by: one dict literal per row is twice as fast as building
    each from zip(), and a 30,000-row answer builds 30,000 of them. `names` are validated
    dimension names (schema.DIMENSIONS), never request text. An event sent without a
    channel is stored with '' and reported as null.
    """
    if any(name not in DIMENSIONS for name in names):
        raise ValueError(f"not dimensions: {names}")
    groups = "".join(f"{name!r}: groups[{n}] or None, " for n, name in enumerate(names))
    source = (
        "lambda keyed: [{'bucket_start': text, " + groups + "'events': int(events), "
        "'unique_users': int(users)} for _, groups, text, events, users in keyed]"
    )
    built: Callable[[list[tuple[Any, ...]]], list[dict[str, Any]]] = eval(source, {})
    return built


def build_response(
    query: MetricsQuery,
    *,
    backend: str,
    total: tuple[int, int],
    rows: Iterable[SeriesRow],
    freshness: Freshness,
) -> MetricsResponse:
    """Normalise an engine's rows into the response: formatted buckets, sorted series."""
    width = len(query.group_by)
    zone = query.zone
    starts: dict[Any, tuple[float, str]] = {}  # many rows share a bucket: convert it once
    keyed = []
    for row in rows:
        start = starts.get(row[0])
        if start is None:
            moment = bucket_start(row[0], query.granularity, zone, query.start)
            start = starts[row[0]] = (moment.timestamp(), format_instant(moment))
        # Sort by the UTC instant (same-zone datetimes compare by wall time, which would
        # tie the two 01:00 hours of a DST fall-back), then by the stored group values,
        # where a missing channel is '' and so comes first; in Python, so that both
        # engines order ties identically. No two rows share both, so a plain tuple sort
        # never looks further.
        keyed.append((start[0], tuple(row[1 : 1 + width]), start[1], row[-2], row[-1]))
    keyed.sort()
    series = _series_builder(query.group_by)(keyed)
    return MetricsResponse(
        from_=format_instant(query.start.astimezone(zone)),
        to=format_instant(query.end.astimezone(zone)),
        event_name=query.event_name,
        granularity=query.granularity,
        group_by=list(query.group_by),
        timezone=query.timezone,
        backend=backend,
        total=Totals(events=int(total[0]), unique_users=int(total[1])),
        series=series,
        freshness=freshness,
    )
