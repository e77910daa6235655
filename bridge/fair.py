"""Fair share per gateway when batches are formed.

The broker sends the bridge its messages in arrival order, up to ``MAX_INFLIGHT`` (and 16 MiB)
unacknowledged. Taken in that order, one gateway's flood (250 messages of 256 KiB) fills batch
after batch while another gateway's message waits behind it. :class:`FairQueue` sorts what has
been received into one FIFO per topic (a gateway's readings topic, or its replay topic) and
serves them round-robin, one message per topic per turn: a message in hand is in the next batch
formed unless that batch is already full of one message from each of more topics than fit
(at most one batch later per ``BATCH_MAX_MESSAGES`` gateways waiting before it).

Bounded: it only holds what the broker sent and nothing is acknowledged yet (at most
``MAX_INFLIGHT`` messages), and a topic's FIFO is dropped once empty.
Order: a gateway's messages keep their order among themselves; across gateways they are
reordered. Acknowledgements were already sent in any order (batches commit concurrently):
Mosquitto takes a PUBACK for any message in flight, whatever its position (docs/bridge.md).
"""

from __future__ import annotations

import asyncio
from collections import deque

from telemetry_common.mqtt import Received


class FairQueue:
    """What ``next_batch`` takes from: ``source``'s messages, round-robin per topic."""

    def __init__(self, source: asyncio.Queue[Received]) -> None:
        self._source = source
        #: Topic -> its messages in arrival order; dict order is the round-robin order.
        self._topics: dict[str, deque[Received]] = {}
        self._held = 0

    def qsize(self) -> int:
        return self._held + self._source.qsize()

    def empty(self) -> bool:
        return self._held == 0 and self._source.empty()

    def get_nowait(self) -> Received:
        """The next message in turn; :class:`asyncio.QueueEmpty` if none is there."""
        while not self._source.empty():
            self._hold(self._source.get_nowait())
        if not self._held:
            raise asyncio.QueueEmpty
        topic, fifo = next(iter(self._topics.items()))
        msg = fifo.popleft()
        self._held -= 1
        del self._topics[topic]
        if fifo:  # its next message waits for the others' turn
            self._topics[topic] = fifo
        return msg

    async def get(self) -> Received:
        """Wait for a message (cancel-safe: one taken from the source is held, not lost)."""
        if self.empty():
            self._hold(await self._source.get())
        return self.get_nowait()

    def _hold(self, msg: Received) -> None:
        fifo = self._topics.get(msg.topic)
        if fifo is None:
            fifo = self._topics[msg.topic] = deque()
        fifo.append(msg)
        self._held += 1
