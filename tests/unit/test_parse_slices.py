"""A large batch is parsed in slices, with the event loop's turn between them, and the
outcome is that of each event on its own: indexes, rejections and rows as in one piece."""

from __future__ import annotations

import asyncio
import json

from event_metrics.ingest import PARSE_SLICE_EVENTS, Ingestor
from event_metrics.queue import IngestQueue
from event_metrics.settings import Settings


def ingestor() -> Ingestor:
    return Ingestor(Settings().ingest, IngestQueue(100_000), rate_limit_events_per_s=0)


def batch(count: int) -> list[bytes]:
    items = []
    for n in range(count):
        event = {"event_name": "e", "user_id": f"u{n}", "idempotency_key": f"k{n}",
                 "properties": {"n": n}}  # fmt: skip
        if n % 977 == 0:
            event["user_id"] = ""  # refused, wherever its slice is
        items.append(json.dumps(event).encode())
    return items


async def test_a_large_batch_lets_the_event_loop_run_while_it_is_parsed() -> None:
    items = batch(4 * PARSE_SLICE_EVENTS)
    turns = 0
    done = False

    async def count_turns() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    try:
        parsed = await ingestor().parse_native(items, 1)
    finally:
        done = True
        await counter
    assert turns >= 3
    assert parsed.count == len(items)


async def test_slices_give_the_outcome_of_each_event_on_its_own() -> None:
    items = batch(3 * PARSE_SLICE_EVENTS + 7)
    whole = await ingestor().parse_native(items, 1)
    one_by_one = [await ingestor().parse_native([item], 1) for item in items]
    rejected = [n for n, alone in enumerate(one_by_one) if alone.rejected]
    assert [r.index for r in whole.rejected] == rejected == list(range(0, len(items), 977))
    assert [r.error for r in whole.rejected] == [one_by_one[n].rejected[0].error for n in rejected]
    assert whole.positions == [n for n in range(len(items)) if n not in rejected]
    stored = [alone.rows[0][:5] for alone in one_by_one if alone.rows]
    assert [row[:5] for row in whole.rows] == stored
