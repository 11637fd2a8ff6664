"""The bounded ingest queue: whole requests or nothing, writers take whole tickets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from event_metrics.queue import IngestQueue, QueueClosed, QueueFull
from event_metrics.schema import Row
from rows import row

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def rows(n: int, prefix: str = "k") -> list[Row]:
    return [row(f"{prefix}{i}", NOW) for i in range(n)]


async def test_a_request_that_does_not_fit_is_refused_whole() -> None:
    queue = IngestQueue(max_events=10)
    queue.put(rows(8))
    with pytest.raises(QueueFull):
        queue.put(rows(3))
    assert queue.depth == 8  # nothing of the refused request went in
    queue.put(rows(2))
    assert queue.depth == 10


async def test_take_gathers_whole_tickets_up_to_the_batch_size() -> None:
    queue = IngestQueue(max_events=100)
    for n in (3, 4, 5):
        queue.put(rows(n, prefix=f"t{n}-"))
    batch = await queue.take(max_events=8, linger_s=0)
    assert [len(t.rows) for t in batch] == [3, 4]
    batch = await queue.take(max_events=2, linger_s=0)  # a ticket larger than the batch
    assert [len(t.rows) for t in batch] == [5]
    assert queue.depth == 0


async def test_take_waits_for_work_and_close_ends_it() -> None:
    queue = IngestQueue(max_events=100)
    waiting = asyncio.create_task(queue.take(max_events=10, linger_s=0))
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put(rows(1))
    assert [len(t.rows) for t in await waiting] == [1]
    queue.close()
    assert await queue.take(max_events=10, linger_s=0) == []
    with pytest.raises(QueueClosed):
        queue.put(rows(1))


async def test_a_ticket_times_out_but_keeps_its_rows() -> None:
    queue = IngestQueue(max_events=100)
    ticket = queue.put(rows(2))
    with pytest.raises(TimeoutError):
        await ticket.outcome(0.01)
    assert queue.depth == 2  # still queued: a writer stores it later


async def test_group_commit_an_idle_writer_takes_at_once_and_batches_grow_meanwhile() -> None:
    """With no linger (the default), a waiting writer leaves with the first request, and
    what arrives while it commits is the next batch, whole."""
    queue = IngestQueue(max_events=100)
    waiting = asyncio.create_task(queue.take(max_events=50, linger_s=0))
    await asyncio.sleep(0)
    queue.put(rows(1, prefix="a"))
    first = await asyncio.wait_for(waiting, timeout=1)
    assert [t.rows[0].idempotency_key for t in first] == ["a0"]
    for prefix in "bcd":  # "during the commit" of the first batch
        queue.put(rows(2, prefix=prefix))
    second = await queue.take(max_events=50, linger_s=0)
    assert [t.rows[0].idempotency_key for t in second] == ["b0", "c0", "d0"]
    assert queue.depth == 0


async def test_a_linger_waits_for_more_until_the_deadline() -> None:
    queue = IngestQueue(max_events=100)
    queue.put(rows(1, prefix="a"))
    taking = asyncio.create_task(queue.take(max_events=50, linger_s=0.2))
    await asyncio.sleep(0.05)
    assert not taking.done()
    queue.put(rows(1, prefix="b"))
    batch = await asyncio.wait_for(taking, timeout=2)
    assert [t.rows[0].idempotency_key for t in batch] == ["a0", "b0"]


async def test_a_gated_taker_waits_while_another_commits_unless_a_backlog_forms() -> None:
    """The writers' gate: while one batch commits, a second taker starts only when
    `may_start` says so (a backlog of 5 here), and wake() makes it look again."""
    queue = IngestQueue(max_events=100)
    in_flight: list[list[object]] = []

    def may_start(waiting: int) -> bool:
        return not in_flight or waiting >= 5

    queue.put(rows(1, prefix="a"))
    in_flight.append(await queue.take(50, 0, may_start))
    second = asyncio.create_task(queue.take(50, 0, may_start))
    queue.put(rows(2, prefix="b"))
    await asyncio.sleep(0.01)
    assert not second.done()  # two events wait behind the commit: no second commit
    queue.put(rows(3, prefix="c"))
    batch = await asyncio.wait_for(second, timeout=1)  # five wait: a second writer starts
    assert [t.rows[0].idempotency_key for t in batch] == ["b0", "c0"]

    third = asyncio.create_task(queue.take(50, 0, may_start))
    queue.put(rows(1, prefix="d"))
    await asyncio.sleep(0.01)
    assert not third.done()
    in_flight.clear()  # the commits return
    queue.wake()
    assert [t.rows[0].idempotency_key for t in await asyncio.wait_for(third, 1)] == ["d0"]


async def test_only_one_gated_taker_leaves_when_the_commit_returns() -> None:
    queue = IngestQueue(max_events=100)
    in_flight: list[object] = ["commit"]
    started: list[list[object]] = []

    async def writer() -> None:
        batch = await queue.take(50, 0, lambda waiting: not in_flight)
        in_flight.append(batch)  # in the same step as the take, as WriterPool does
        started.append(batch)

    writers = [asyncio.create_task(writer()) for _ in range(3)]
    queue.put(rows(1, prefix="a"))
    queue.put(rows(1, prefix="b"))
    await asyncio.sleep(0.01)
    assert started == []
    in_flight.clear()
    queue.wake()
    await asyncio.sleep(0.01)
    assert len(started) == 1 and len(started[0]) == 2  # one writer took both, none idle took
    for task in writers:
        task.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
