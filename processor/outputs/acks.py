"""Stored acknowledgements: after a commit, each gateway is told which of its seqs are handled
(stored in InfluxDB, or dead-lettered), on ``{root}/{gateway}/stored`` (docs/design.md, "Stored
acknowledgements"). The gateway forgets a reading only then, so the broker is no longer part of
the durability chain: what it loses (a crash between autosaves, a full queue, a subscriber that
is not a bridge) the gateway sends again.

Coalesced and budgeted, like the live feed: what a commit handled is added to the gateway's
pending ranges, and a flush every ``interval_s`` publishes one message per (gateway, epoch) with
everything pending, at most ``max_rate`` messages per second in all, the gateways waiting longest
first. A fleet then costs at most the budget, not a publish per message: 10,000 gateways with a
budget of 1,000/s are each acknowledged every ~10 s, which their window of unacknowledged
readings (``TELEMETRY_EDGE_MAX_UNCONFIRMED``) and timeout (``STORED_TIMEOUT_S``) must cover.

Eager for busy gateways: once ``eager_readings`` seqs of one gateway are pending, it is
acknowledged right after the commit, without waiting for the interval. A gateway draining a
backlog sends far more per interval than its window holds (measured: waiting for the interval
held one gateway to ~60% of the pipeline's rate); acknowledging it at once costs one message
per ``eager_readings`` readings, nothing next to storing them.

Losing an acknowledgement (not connected, the bridge killed before the flush) costs a replay of
the batch by the gateway, never a reading: a failed publish puts its ranges back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from processor.metrics import Metrics
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)
from telemetry_common.stored_ack import encode as ack_payload
from telemetry_common.stored_ack import to_ranges
from telemetry_common.topics import Topics

__all__ = ["StoredAcks", "ack_payload", "to_ranges"]

log = logging.getLogger(__name__)

#: Acknowledgements published together (concurrently), a chunk at a time.
_CHUNK = 100

Key = tuple[str, str | None]  # (gateway_id, epoch)


class StoredAcks:
    def __init__(
        self,
        mqtt: AsyncMqttClient,
        topics: Topics,
        metrics: Metrics,
        interval_s: float,
        max_rate: float = 0.0,
        eager_readings: int = 0,
    ) -> None:
        """``max_rate``: acknowledgements per second in all (0: no budget); ``eager_readings``:
        a gateway with this many seqs pending is acknowledged at once (0: never)."""
        self._mqtt = mqtt
        self._topics = topics
        self._metrics = metrics
        self._interval_s = interval_s
        self._max_rate = max_rate
        self._tokens = max_rate
        self._refilled = time.monotonic()
        #: Pending seqs per (gateway, epoch), in the order they first became pending: the
        #: front has waited longest.
        self._pending: dict[Key, list[int]] = {}
        self._eager = eager_readings
        self._due: set[Key] = set()  # pending past ``eager_readings``: flushed at once
        self._wake = asyncio.Event()
        metrics.acks_waiting.set_function(lambda: float(len(self._pending)))

    def add(self, gateway_id: str, epoch: str | None, seqs: list[int]) -> None:
        """``seqs`` of ``gateway_id`` (and ``epoch``) are handled: acknowledge them soon."""
        if not seqs:
            return
        key = (gateway_id, epoch)
        held = self._pending.get(key)
        if held is None:
            held = self._pending[key] = list(seqs)
        else:
            held.extend(seqs)
        if self._eager and len(held) >= self._eager:
            self._due.add(key)
            self._wake.set()

    @property
    def waiting(self) -> int:
        """Gateways (and epochs) with something to acknowledge."""
        return len(self._pending)

    async def flush(self, *, budget: bool = True, only: set[Key] | None = None) -> None:
        """Publish what is pending, the longest waiting first, within the rate budget
        (``budget=False``: all of it, as at shutdown; ``only``: just these keys)."""
        keys = list(self._pending) if only is None else [k for k in only if k in self._pending]
        if budget and self._max_rate > 0:
            now = time.monotonic()
            rate = self._max_rate
            self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            keys = keys[: int(self._tokens)]
            self._tokens -= len(keys)
        self._due.difference_update(keys)
        taken = [(key, self._pending.pop(key)) for key in keys]
        for i in range(0, len(taken), _CHUNK):
            chunk = taken[i : i + _CHUNK]
            await asyncio.gather(*(self._publish_one(key, seqs) for key, seqs in chunk))

    async def _publish_one(self, key: Key, seqs: list[int]) -> None:
        gateway_id, epoch = key
        try:
            await self._mqtt.publish(self._topics.stored(gateway_id), ack_payload(epoch, seqs))
        except (PublishLostError, NotConnectedError) as exc:
            log.debug("stored acknowledgement for %s not published (%s); kept", gateway_id, exc)
            self.add(gateway_id, epoch, seqs)  # next flush (the gateway may replay meanwhile)
            return
        except PublishRejectedError as exc:
            # The ACL must let the bridge write {root}/+/stored; without it gateways replay
            # every batch until their timeout. Say so, do not retry forever.
            log.error("stored acknowledgement for %s refused (%s): check the ACL", gateway_id, exc)
            return
        self._metrics.acks_published.inc()

    async def run(self) -> None:
        """Flush every ``interval_s``, and busy gateways as soon as they are due, until
        cancelled."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self._interval_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_flush - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._mqtt.connected:
                await self._mqtt.wait_connected()  # what is pending waits (no busy loop)
                next_flush = loop.time()
                continue
            if loop.time() >= next_flush:
                next_flush = loop.time() + self._interval_s
                if self._pending:
                    await self.flush()
            elif self._due:
                await self.flush(only=set(self._due))
