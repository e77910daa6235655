"""The live feed: each charger's newest stored reading, retained on ``{root}/live/{charger}``.

Conflated: at most one publish per charger per ``min_interval_s``; a newer reading arriving
sooner waits (replacing any older one waiting) and goes out when the interval has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from processor.metrics import Metrics
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)
from telemetry_common.schema import Reading, reading_to_dict
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)


class LiveFeed:
    def __init__(
        self, mqtt: AsyncMqttClient, topics: Topics, metrics: Metrics, min_interval_s: float
    ) -> None:
        self._mqtt = mqtt
        self._topics = topics
        self._metrics = metrics
        self._min_interval_s = min_interval_s
        self._last_sent: dict[str, float] = {}
        self._waiting: dict[str, tuple[str, Reading]] = {}

    def offer(self, gateway_id: str, reading: Reading) -> None:
        """Queue ``reading`` (already known to be the charger's newest) for publishing."""
        self._waiting[reading.charger_id] = (gateway_id, reading)

    async def flush(self) -> None:
        """Publish every waiting value whose charger's interval has passed."""
        now = time.monotonic()
        due = [
            c for c in self._waiting if now - self._last_sent.get(c, -1e9) >= self._min_interval_s
        ]
        for charger_id in due:
            gateway_id, reading = self._waiting.pop(charger_id)
            body = reading_to_dict(reading)
            body["gateway_id"] = gateway_id
            try:
                await self._mqtt.publish(
                    self._topics.live(charger_id), orjson.dumps(body), retain=True
                )
            except (PublishLostError, NotConnectedError, PublishRejectedError) as exc:
                # The reading is stored already; the feed catches up with the next one.
                log.warning("live update for %s not published: %s", charger_id, exc)
                continue
            self._last_sent[charger_id] = now
            self._metrics.live_published.inc()

    async def run(self) -> None:
        """Flush what waits, a few times per interval."""
        while True:
            await asyncio.sleep(max(0.01, self._min_interval_s / 4))
            if self._waiting and self._mqtt.connected:
                await self.flush()
