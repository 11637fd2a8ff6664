"""A deterministic, realistic synthetic event data set, generated in vectorised chunks.

The data set is a pure function of `DatasetSpec`: the number of rows per hour is drawn once,
hours are grouped into chunks of about `CHUNK_ROWS`, and each chunk has its own random
stream, so chunks can be generated in any order, or in parallel, with identical results.
Rows are numbered in time order; row i gets the key `seed-<seed>-<i, zero-padded>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

CHUNK_ROWS = 100_000
USERS = 1_000_000
USER_ID_DIGITS = 7
KEY_DIGITS = 10

# Skewed like a shop's clickstream; the shares add up to 1.
EVENTS: tuple[tuple[str, float], ...] = (
    ("product_view", 0.55),
    ("page_view", 0.20),
    ("add_to_cart", 0.10),
    ("search", 0.08),
    ("checkout", 0.04),
    ("purchase", 0.02),
    ("signup", 0.01),
)
# '' is an event sent without a channel (the API stores it as '' and reports null).
CHANNELS: tuple[tuple[str, float], ...] = (
    ("web", 0.38),
    ("ios", 0.22),
    ("android", 0.20),
    ("ads", 0.07),
    ("email", 0.06),
    ("partner", 0.04),
    ("", 0.03),
)
# Most users stick to one device; the rest of their events come from anywhere.
HOME_CHANNEL_SHARE = 0.85
# Per event name: the share of events that carry properties, and the JSON written in
# jsonb's canonical text form (keys by length then bytes, ": " and ", "), so that
# properties::text in PostgreSQL equals the string ClickHouse gets. Each run of '#' is
# filled with random zero-padded digits from the range beside it.
PROPERTIES: dict[str, tuple[float, str, tuple[tuple[int, int], ...]]] = {
    "product_view": (0.9, '{"product_id": "p-######"}', ((0, 10**6),)),
    "page_view": (0.3, '{"path": "/c/###"}', ((0, 1000),)),
    "add_to_cart": (
        1.0,
        '{"quantity": #, "product_id": "p-######"}',
        ((1, 10), (0, 10**6)),
    ),
    "search": (0.7, '{"results": ###}', ((100, 1000),)),
    "checkout": (1.0, '{"items": #}', ((1, 10),)),
    "purchase": (
        1.0,
        '{"order_id": "o-########", "amount_cents": #####}',
        ((0, 10**8), (10_000, 100_000)),
    ),
}
PROPERTIES_WIDTH = max(len(template) for _, template, _ in PROPERTIES.values())

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class DatasetSpec:
    rows: int
    days: int
    seed: int
    end: datetime

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    first_row: int
    hour_starts_us: I64  # Unix microseconds of each hour in the chunk
    hour_counts: I64


@dataclass(frozen=True)
class Chunk:
    """One slice of the data set, in time order, as small codes."""

    first_row: int
    ts_us: I64  # Unix microseconds, UTC
    event: npt.NDArray[np.uint8]  # index into EVENTS
    channel: npt.NDArray[np.uint8]  # index into CHANNELS
    user: I64  # user number
    properties: U8  # (rows, PROPERTIES_WIDTH) JSON bytes, zero-padded
    properties_len: npt.NDArray[np.int32]  # -1 = NULL

    def __len__(self) -> int:
        return len(self.ts_us)


def _hour_weights(
    spec: DatasetSpec, rng: np.random.Generator
) -> tuple[I64, npt.NDArray[np.float64]]:
    hours = spec.days * 24
    start_us = int(spec.start.timestamp()) * 1_000_000
    starts = start_us + np.arange(hours, dtype=np.int64) * HOUR_US
    moments = starts.astype("datetime64[us]")
    hour_of_day = (moments.astype("datetime64[h]").astype(np.int64) % 24).astype(np.float64)
    weekday = (moments.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 0 = Monday
    # Trough at 04:00 UTC, peak at 16:00; weekends 30% quieter; +25% growth over the period;
    # and a little day-to-day noise so no two weeks look the same.
    daily = 0.2 + 0.8 * (0.5 - 0.5 * np.cos(2 * np.pi * (hour_of_day - 4) / 24))
    weekly = np.where(weekday >= 5, 0.7, 1.0)
    trend = 1.0 + 0.25 * np.arange(hours) / hours
    noise = np.repeat(rng.lognormal(0.0, 0.08, spec.days), 24)
    weights = daily * weekly * trend * noise
    return starts, weights / weights.sum()


def plan_chunks(spec: DatasetSpec) -> list[ChunkPlan]:
    """Split the data set into whole-hour chunks of about CHUNK_ROWS rows."""
    rng = np.random.default_rng([spec.seed, 1])
    starts, weights = _hour_weights(spec, rng)
    counts = rng.multinomial(spec.rows, weights).astype(np.int64)
    plans: list[ChunkPlan] = []
    first_hour = first_row = 0
    running = 0
    # A chunk ends before the hour that would take it past CHUNK_ROWS, so one chunk is one
    # ClickHouse insert block (unless a single hour is bigger than that).
    for hour, count in enumerate(counts.tolist()):
        if running and running + count > CHUNK_ROWS:
            sl = slice(first_hour, hour)
            plans.append(ChunkPlan(len(plans), first_row, starts[sl], counts[sl]))
            first_row += running
            first_hour, running = hour, 0
        running += count
    plans.append(ChunkPlan(len(plans), first_row, starts[first_hour:], counts[first_hour:]))
    return plans


class Population:
    """The users: long-tailed activity (lognormal weights) and a home channel each."""

    def __init__(self, seed: int, users: int = USERS) -> None:
        rng = np.random.default_rng([seed, 2])
        activity = rng.lognormal(0.0, 1.6, users)
        self.cdf = np.cumsum(activity / activity.sum())
        self.cdf[-1] = 1.0
        # A permutation, so that user numbers say nothing about activity.
        self.numbers = rng.permutation(users).astype(np.int64)
        self.home_channel = _draw(rng, [share for _, share in CHANNELS], users)


def _draw(rng: np.random.Generator, shares: list[float], n: int) -> npt.NDArray[np.uint8]:
    cdf = np.cumsum(shares)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, rng.random(n), side="right").astype(np.uint8)


def digits(values: I64, width: int) -> U8:
    """ASCII digits of non-negative ints, zero-padded to `width`: a (n, width) matrix."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def _template_slots(template: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end() - m.start()) for m in re.finditer("#+", template)]


def generate(spec: DatasetSpec, plan: ChunkPlan, population: Population) -> Chunk:
    """The rows of one chunk; the same plan always gives the same rows."""
    rng = np.random.default_rng([spec.seed, 3, plan.index])
    n = int(plan.hour_counts.sum())
    offsets = rng.integers(0, HOUR_US, n, dtype=np.int64)
    ts_us = np.sort(np.repeat(plan.hour_starts_us, plan.hour_counts) + offsets)
    event = _draw(rng, [share for _, share in EVENTS], n)
    picks = np.searchsorted(population.cdf, rng.random(n), side="right")
    user = population.numbers[picks]
    channel = np.where(
        rng.random(n) < HOME_CHANNEL_SHARE,
        population.home_channel[picks],
        _draw(rng, [share for _, share in CHANNELS], n),
    ).astype(np.uint8)

    props = np.zeros((n, PROPERTIES_WIDTH), dtype=np.uint8)
    props_len = np.full(n, -1, dtype=np.int32)
    carries = rng.random(n)
    for code, (name, _) in enumerate(EVENTS):
        if name not in PROPERTIES:
            continue
        share, template, ranges = PROPERTIES[name]
        rows = np.flatnonzero((event == code) & (carries < share))
        raw = np.frombuffer(template.encode(), dtype=np.uint8)
        props[rows, : len(raw)] = raw
        for (position, width), (low, high) in zip(_template_slots(template), ranges, strict=True):
            values = rng.integers(low, high, len(rows), dtype=np.int64)
            props[rows, position : position + width] = digits(values, width)
        props_len[rows] = len(raw)
    return Chunk(plan.first_row, ts_us, event, channel, user, props, props_len)


def generate_all(spec: DatasetSpec, plans: list[ChunkPlan]) -> Iterator[Chunk]:
    population = Population(spec.seed)
    for plan in plans:
        yield generate(spec, plan, population)


def end_of(text: str) -> datetime:
    """Parse an RFC 3339 instant (Z allowed) into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
