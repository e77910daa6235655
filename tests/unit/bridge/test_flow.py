"""The bridge's batch flow: how a batch is taken (idle writer, busy writer, byte cap), then the
depth bound, overlapping commits, stop and failure (pure asyncio logic: batches are lists of
ints or fake messages, commits are controlled by events)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.fair import FairQueue
from bridge.flow import BatchFlow, next_batch
from telemetry_common.mqtt import Received


class Source:
    """Hands out batches ``[k]`` for k = 1, 2, ... up to ``limit``, then waits forever."""

    def __init__(self, limit: int = 1000) -> None:
        self.taken: list[int] = []
        self.limit = limit

    async def take(self) -> list[int]:
        if len(self.taken) >= self.limit:
            await asyncio.Event().wait()
        self.taken.append(len(self.taken) + 1)
        return [self.taken[-1]]


async def prepared(msgs: list[int]) -> str:
    return f"batch-{msgs[0]}"


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_at_most_depth_batches_are_in_hand_while_commits_hang() -> None:
    """With every commit stuck (InfluxDB down), the flow takes ``depth`` batches and no more:
    the rest stays with the broker."""
    source, release = Source(), asyncio.Event()
    started: list[str] = []

    async def commit(msgs: list[int], batch: str) -> None:
        started.append(batch)
        await release.wait()

    flow: BatchFlow[list[int], str] = BatchFlow(3)
    stop = asyncio.Event()
    run = asyncio.create_task(flow.run(source.take, prepared, commit, stop))
    await settle()
    assert source.taken == [1, 2, 3]
    assert started == ["batch-1", "batch-2", "batch-3"]
    assert flow.in_hand == 3
    assert not flow.idle.is_set()
    release.set()
    await settle()
    assert len(source.taken) > 3  # room again once commits finished
    stop.set()
    await asyncio.wait_for(run, 5)


async def test_a_later_batch_is_acknowledged_while_an_earlier_one_is_still_written() -> None:
    """Commits overlap and finish in any order: batch 2 is done (acknowledged) while batch 1
    still waits, and its slot is reused at once."""
    source = Source(limit=3)
    gates = {f"batch-{k}": asyncio.Event() for k in (1, 2, 3)}
    done: list[str] = []

    async def commit(msgs: list[int], batch: str) -> None:
        await gates[batch].wait()
        done.append(batch)

    flow: BatchFlow[list[int], str] = BatchFlow(2)
    stop = asyncio.Event()
    run = asyncio.create_task(flow.run(source.take, prepared, commit, stop))
    await settle()
    assert source.taken == [1, 2]
    gates["batch-2"].set()
    await settle()
    assert done == ["batch-2"]
    assert source.taken == [1, 2, 3]  # batch 2's slot went to batch 3
    gates["batch-3"].set()
    gates["batch-1"].set()
    await settle()
    assert sorted(done) == ["batch-1", "batch-2", "batch-3"]
    assert flow.idle.is_set()
    assert flow.in_hand == 0
    stop.set()
    await asyncio.wait_for(run, 5)


async def test_stop_commits_what_was_prepared_and_leaves_what_is_being_taken() -> None:
    """On stop, batches already prepared are still committed before run() returns; the flow
    does not take another one."""
    source, release = Source(limit=2), asyncio.Event()
    done: list[str] = []

    async def commit(msgs: list[int], batch: str) -> None:
        await release.wait()
        done.append(batch)

    flow: BatchFlow[list[int], str] = BatchFlow(4)
    stop = asyncio.Event()
    run = asyncio.create_task(flow.run(source.take, prepared, commit, stop))
    await settle()
    assert source.taken == [1, 2]  # the third take() is waiting for messages
    stop.set()
    await settle()
    assert not run.done()  # still committing
    release.set()
    await asyncio.wait_for(run, 5)
    assert sorted(done) == ["batch-1", "batch-2"]
    assert source.taken == [1, 2]


async def test_a_failing_commit_ends_the_flow_with_its_error() -> None:
    """An unexpected error in a commit is not swallowed: run() ends with it and the other
    commits in progress are cancelled (their messages stay unacknowledged)."""
    source = Source(limit=2)
    never = asyncio.Event()

    async def commit(msgs: list[int], batch: str) -> None:
        if batch == "batch-2":
            raise RuntimeError("boom")
        await never.wait()

    flow: BatchFlow[list[int], str] = BatchFlow(3)
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(flow.run(source.take, prepared, commit, asyncio.Event()), 5)
    assert [str(e) for e in caught.value.exceptions] == ["boom"]


def test_depth_below_one_is_refused() -> None:
    """A depth of 0 would never take a batch: it is a configuration error."""
    with pytest.raises(ValueError, match="depth"):
        BatchFlow(0)


async def test_idle_means_a_writer_is_free() -> None:
    """With two writers, ``idle`` stays set while one commit is in progress (the next batch
    need not wait for more messages) and clears only when both are busy; it is set again as
    soon as one of them finishes."""
    source = Source(limit=2)
    gates = {"batch-1": asyncio.Event(), "batch-2": asyncio.Event()}
    flow: BatchFlow[list[int], str] = BatchFlow(3, writers=2)
    seen: list[bool] = []

    async def commit(msgs: list[int], batch: str) -> None:
        seen.append(flow.idle.is_set())
        await gates[batch].wait()

    stop = asyncio.Event()
    run = asyncio.create_task(flow.run(source.take, prepared, commit, stop))
    await settle()
    assert seen == [True, False]  # after the first commit started: one writer still free
    assert not flow.idle.is_set()
    gates["batch-2"].set()
    await settle()
    assert flow.idle.is_set()
    gates["batch-1"].set()
    stop.set()
    await asyncio.wait_for(run, 5)
    with pytest.raises(ValueError, match="at least 1"):
        BatchFlow(1, writers=0)


def received(n: int, size: int = 10) -> Received:
    return Received("chargers/v1/gw-1/readings", b"x" * size, 1, n, 1)


async def test_an_idle_writer_gets_the_first_message_at_once() -> None:
    """With nothing being written, waiting for more messages only adds latency: the batch is
    what is queued, even with a long max wait."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    queue.put_nowait(received(1))
    idle = asyncio.Event()
    idle.set()
    started = time.monotonic()
    batch = await next_batch(queue, 500, 5.0, 1 << 20, idle)
    assert [m.mid for m in batch] == [1]
    assert time.monotonic() - started < 1.0


async def test_a_busy_writer_lets_the_batch_fill_until_it_is_idle() -> None:
    """While a write is in progress, messages are collected; the batch closes when the writer
    becomes idle (not at the 5 s deadline)."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    idle = asyncio.Event()
    queue.put_nowait(received(1))

    async def feed() -> None:
        for mid in range(2, 5):
            await asyncio.sleep(0.02)
            queue.put_nowait(received(mid))
        await asyncio.sleep(0.05)
        idle.set()
        await asyncio.sleep(0.05)
        queue.put_nowait(received(99))  # after the batch closed: stays queued

    feeder = asyncio.create_task(feed())
    batch = await next_batch(queue, 500, 5.0, 1 << 20, idle)
    await feeder
    assert [m.mid for m in batch] == [1, 2, 3, 4]
    assert queue.qsize() == 1


async def test_the_batch_ends_at_its_byte_cap() -> None:
    """A batch stops growing once its payloads reach ``max_bytes``; the rest stays queued."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    for mid in range(10):
        queue.put_nowait(received(mid, size=100))
    batch = await next_batch(queue, 500, 0.01, 250, None)
    assert len(batch) == 3
    assert queue.qsize() == 7


def on(gateway: str, n: int, size: int = 10) -> Received:
    return Received(f"chargers/v1/{gateway}/readings", b"x" * size, 1, n, 1)


async def test_a_flood_of_one_gateway_delays_the_others_by_at_most_one_batch() -> None:
    """250 messages of one gateway arrived before one of another: taken round-robin per
    gateway, the other's message is in the very next batch, and each gateway's messages keep
    their order."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    for n in range(250):
        queue.put_nowait(on("flood", n, 256 * 1024))
    queue.put_nowait(on("calm", 1000))
    queue.put_nowait(on("calm", 1001))
    intake = FairQueue(queue)
    first = await next_batch(intake, 500, 0.1, 2 * 1024 * 1024)
    assert [m.mid for m in first if m.topic.endswith("/calm/readings")] == [1000, 1001]
    assert len(first) == 10  # 8 of the flood's 256 KiB reach the byte cap, 2 of calm's
    taken = [m.mid for m in first if "/flood/" in m.topic]
    while not intake.empty():
        taken += [m.mid for m in await next_batch(intake, 500, 0.1, 2 * 1024 * 1024)]
    assert taken == list(range(250))
    assert intake.qsize() == 0


async def test_a_message_arriving_while_a_batch_waits_is_taken_in_its_turn() -> None:
    """Waiting for more (writer busy), the fair intake hands out what arrives; cancelling a
    wait loses nothing."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    intake = FairQueue(queue)
    waiting = asyncio.ensure_future(intake.get())
    await settle()
    waiting.cancel()
    queue.put_nowait(on("a", 1))
    batch = await next_batch(intake, 10, 0.05, 1024 * 1024)
    assert [m.mid for m in batch] == [1]
