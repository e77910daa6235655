"""The live feed: each charger's newest stored reading, retained on ``{root}/live/{charger}``.

Conflated: at most one publish per charger per ``min_interval_s``; a newer reading arriving
sooner waits (replacing any older one waiting) and goes out when the interval has passed.

Budgeted: at most ``max_rate`` publishes per second in all, so the feed's cost is bounded by the
budget, not by the size of the fleet. When more chargers are due than the budget allows, the
budget is shared round-robin among their gateways, and within a gateway those published longest
ago go first (a gateway flooding with new chargers cannot hold back the others' values); each
charger's value then refreshes less often (the ``live_waiting`` gauge shows how many wait),
never out of order.

Yielding: while ``busy()`` says ingestion is behind (messages wait beyond the batches in hand),
the budget is ``busy_rate`` instead. A live publish costs the bridge ~250 us of CPU (paho's
per-packet work in Python on both threads, measured), so at full load 500/s took about a fifth of
the pipeline's throughput; the convenience feed must not slow the storing it reports on.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import orjson

from processor.metrics import Metrics
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)
from telemetry_common.schema import ReadingRow, row_to_dict
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

#: Live publishes in flight at once: a flush's synchronous work comes in slices of this many,
#: so a batch waiting to be prepared or written does not wait for a whole flush (and paho's
#: scan of its in-flight messages on every PUBACK stays short).
_CHUNK = 50


class LiveFeed:
    def __init__(
        self,
        mqtt: AsyncMqttClient,
        topics: Topics,
        metrics: Metrics,
        min_interval_s: float,
        max_rate: float = 0.0,
        *,
        busy_rate: float = 0.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        """``max_rate``: publishes per second in all (0: no budget); ``busy_rate``: the budget
        while ``busy()`` (0: none are published then)."""
        self._mqtt = mqtt
        self._topics = topics
        self._metrics = metrics
        self._min_interval_s = min_interval_s
        self._max_rate = max_rate
        self._busy_rate = busy_rate
        self._busy = busy
        # Token bucket: at most one second's worth of budget saved up.
        self._tokens = max_rate
        self._refilled = time.monotonic()
        self._last_sent: dict[str, float] = {}
        self._waiting: dict[str, tuple[str, ReadingRow]] = {}
        self._new = asyncio.Event()
        metrics.live_waiting.set_function(lambda: float(self.waiting))

    def offer(self, gateway_id: str, reading: ReadingRow) -> None:
        """Queue ``reading`` (already known to be the charger's newest) for publishing."""
        self._waiting[reading["charger_id"]] = (gateway_id, reading)
        self._new.set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def flush(self, *, budget: bool = True) -> None:
        """Publish waiting values whose charger's interval has passed, within the rate budget
        (``budget=False``: all of them, as at shutdown)."""
        now = time.monotonic()
        rate = self._max_rate
        if budget and self._busy is not None and self._busy():
            rate = self._busy_rate if rate <= 0 else min(rate, self._busy_rate)
            if rate <= 0:
                self._tokens, self._refilled = 0.0, now
                return
        last = self._last_sent
        due = [c for c in self._waiting if now - last.get(c, -1e9) >= self._min_interval_s]
        if budget and rate > 0:
            self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            allowed = int(self._tokens)
            if len(due) > allowed:
                due = self._fair_share(due, allowed)
            self._tokens -= len(due)
        # Publishes go out together, a chunk at a time.
        for i in range(0, len(due), _CHUNK):
            chunk = due[i : i + _CHUNK]
            await asyncio.gather(*(self._publish_one(c, now) for c in chunk))

    def _fair_share(self, due: list[str], allowed: int) -> list[str]:
        """``allowed`` of the ``due`` chargers, shared round-robin among their gateways (each
        gateway's published longest ago first): one gateway with 100,000 new chargers takes
        one turn in each round like any other, instead of the whole budget for minutes."""
        last = self._last_sent
        by_gateway: dict[str, list[str]] = defaultdict(list)
        for charger_id in due:
            by_gateway[self._waiting[charger_id][0]].append(charger_id)
        queues = [
            heapq.nsmallest(allowed, group, key=lambda c: last.get(c, -1e9))
            for group in by_gateway.values()
        ]
        picked: list[str] = []
        for turn in range(allowed):
            for queue in queues:
                if turn < len(queue):
                    picked.append(queue[turn])
            if len(picked) >= allowed:
                break
        return picked[:allowed]

    async def _publish_one(self, charger_id: str, now: float) -> None:
        waiting = self._waiting.pop(charger_id, None)
        if waiting is None:  # taken by a concurrent flush (the final one at shutdown)
            return
        gateway_id, reading = waiting
        body = row_to_dict(reading)
        body["gateway_id"] = gateway_id
        try:
            await self._mqtt.publish(self._topics.live(charger_id), orjson.dumps(body), retain=True)
        except (PublishLostError, NotConnectedError, PublishRejectedError) as exc:
            # The reading is stored already; the feed catches up with the next one.
            log.warning("live update for %s not published: %s", charger_id, exc)
            return
        self._last_sent[charger_id] = now
        self._metrics.live_published.inc()

    async def run(self) -> None:
        """Publish as soon as something new is stored; values held back by the interval go out
        when it has passed."""
        tick = max(0.01, min(self._min_interval_s / 4, 0.25))
        while True:
            try:
                async with asyncio.timeout(tick):
                    await self._new.wait()
            except TimeoutError:
                pass
            self._new.clear()
            if self._waiting and self._mqtt.connected:
                await self.flush()
