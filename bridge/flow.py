"""How batches move through the bridge: taken from the broker's queue, prepared, committed.

Up to ``depth`` batches are in hand at once (taken and not yet acknowledged), so the next batch
is prepared (the CPU half: decoding, validation, line protocol) while earlier ones are being
written: the bridge's CPU and InfluxDB's work overlap instead of taking turns. Commits run
concurrently and each acknowledges its own messages as soon as they are safe, whatever the
order: nothing a commit does depends on another batch's (the last-value cache and the gap
tracker compare seq and ts, the broker takes acknowledgements in any order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized
from typing import Any, Generic, Protocol, TypeVar

from telemetry_common.mqtt import Received

M = TypeVar("M", bound=Sized)
B = TypeVar("B")


class Intake(Protocol):
    """Where batches are taken from (:class:`bridge.fair.FairQueue`, or an asyncio.Queue)."""

    def empty(self) -> bool: ...

    def get_nowait(self) -> Received: ...

    async def get(self) -> Received: ...


async def next_batch(
    queue: Intake,
    max_messages: int,
    max_wait_s: float,
    max_bytes: int,
    writer_idle: asyncio.Event | None = None,
) -> list[Received]:
    """Wait for one message, then take more until ``max_messages``, ``max_bytes`` of payload or
    ``max_wait_s`` passed, or, as soon as nothing more is queued, until ``writer_idle`` is set:
    waiting for more only pays while a write is in progress; an idle writer gets what is there.
    """
    batch = [await queue.get()]
    size = len(batch[0].payload)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_messages and size < max_bytes:
        if not queue.empty():
            batch.append(queue.get_nowait())
            size += len(batch[-1].payload)
            continue
        left = deadline - loop.time()
        if left <= 0 or (writer_idle is not None and writer_idle.is_set()):
            break
        getting = asyncio.ensure_future(queue.get())
        waits: set[asyncio.Future[Any]] = {getting}
        if writer_idle is not None:
            waits.add(asyncio.ensure_future(writer_idle.wait()))
        try:
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if getting.done() and not getting.cancelled():
            batch.append(getting.result())
            size += len(batch[-1].payload)
    return batch


class BatchFlow(Generic[M, B]):
    """Run ``take -> prepare -> commit`` with at most ``depth`` batches in hand.

    ``take()`` returns the next batch of messages (it may wait), ``prepare(msgs)`` turns it into
    something to commit, ``commit(msgs, prepared)`` stores it and acknowledges ``msgs``.
    """

    def __init__(self, depth: int, writers: int = 1) -> None:
        """``writers``: commits that can make progress at once (the writer's concurrency)."""
        if depth < 1 or writers < 1:
            raise ValueError("depth and writers must be at least 1")
        self._room = asyncio.Semaphore(depth)
        self._writers = writers
        self._committing = 0
        #: Messages taken and not yet committed (for the unacknowledged-messages gauge).
        self.in_hand = 0
        #: Set while fewer than ``writers`` commits are in progress: with a writer free, the
        #: next batch should not wait for more messages (waiting only pays while every writer
        #: is busy, and at full load batches fill up anyway).
        self.idle = asyncio.Event()
        self.idle.set()

    async def run(
        self,
        take: Callable[[], Awaitable[M]],
        prepare: Callable[[M], Awaitable[B]],
        commit: Callable[[M, B], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        """Until ``stop`` is set; then what was prepared is still committed, and a batch being
        taken is left unacknowledged (the broker redelivers it). A failing commit cancels the
        rest and ends this with its exception (in an ExceptionGroup)."""
        async with asyncio.TaskGroup() as tg:
            stopping = tg.create_task(stop.wait())
            while not stop.is_set():
                await self._room.acquire()
                taking = asyncio.ensure_future(take())
                try:
                    await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    taken = taking.done()
                    if not taken:
                        taking.cancel()
                if not taken:
                    self._room.release()
                    break
                msgs = taking.result()
                self.in_hand += len(msgs)
                prepared = await prepare(msgs)
                self._committing += 1
                if self._committing >= self._writers:
                    self.idle.clear()
                tg.create_task(self._commit(commit, msgs, prepared))
            stopping.cancel()

    async def _commit(
        self, commit: Callable[[M, B], Awaitable[None]], msgs: M, prepared: B
    ) -> None:
        try:
            await commit(msgs, prepared)
        finally:
            self.in_hand -= len(msgs)
            self._committing -= 1
            if self._committing < self._writers:
                self.idle.set()
            self._room.release()
