"""The live feed's budget: rate, oldest first, yielding to ingestion (pure asyncio logic, a
fake for MQTT)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import cast

from processor.metrics import Metrics
from processor.outputs.live import LiveFeed
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.schema import Reading, ReadingRow
from telemetry_common.topics import Topics


class FakeMqtt:
    connected = True

    def __init__(self) -> None:
        self.topics: list[str] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.topics.append(topic)


def reading(charger: str, seq: int) -> ReadingRow:
    return dict(Reading(charger_id=charger, seq=seq, ts=datetime.now(UTC), values={"power_w": 1.0}))


async def test_live_feed_stays_within_its_rate_budget_oldest_first() -> None:
    """With 50 chargers due and a budget of 10/s, one flush publishes 10; the chargers that were
    never published go before one published a moment ago; nothing is lost, only deferred."""
    mqtt = FakeMqtt()
    metrics = Metrics()
    live = LiveFeed(cast(AsyncMqttClient, mqtt), Topics(), metrics, 0.0, max_rate=10)
    live.offer("gw-1", reading("cp-first", 1))
    await live.flush()
    assert mqtt.topics == ["chargers/v1/live/cp-first"]
    await asyncio.sleep(0.15)  # refills one token: 9 + 1
    for i in range(49):
        live.offer("gw-1", reading(f"cp-{i:02d}", 1))
    live.offer("gw-1", reading("cp-first", 2))
    mqtt.topics.clear()
    await live.flush()
    assert len(mqtt.topics) == 10
    assert "chargers/v1/live/cp-first" not in mqtt.topics
    assert live.waiting == 40
    assert metrics.snapshot()["telemetry_bridge_live_waiting"] == 40  # the gauge an operator sees
    await live.flush(budget=False)
    assert live.waiting == 0
    assert "chargers/v1/live/cp-first" in mqtt.topics


async def test_live_feed_yields_to_ingestion_while_it_is_behind() -> None:
    """While busy() says messages wait, the budget is busy_rate (0: nothing is published);
    the values wait, none is lost, and they go out at the full rate once ingestion caught up."""
    mqtt = FakeMqtt()
    behind = True
    live = LiveFeed(
        cast(AsyncMqttClient, mqtt), Topics(), Metrics(), 0.0, 100, busy_rate=0, busy=lambda: behind
    )
    for i in range(30):
        live.offer("gw-1", reading(f"cp-{i:02d}", 1))
    await asyncio.sleep(0.2)  # 20 tokens' worth of time at the full rate
    await live.flush()
    assert mqtt.topics == []
    assert live.waiting == 30
    behind = False
    await asyncio.sleep(0.1)
    await live.flush()  # the busy time saved no budget: only what accrued since
    assert 5 <= len(mqtt.topics) <= 20
    await live.flush(budget=False)
    assert live.waiting == 0
    assert len(mqtt.topics) == 30


async def test_live_feed_budget_while_busy_is_the_smaller_rate() -> None:
    """busy_rate caps the budget while behind (and max_rate still caps it when smaller)."""
    mqtt = FakeMqtt()
    live = LiveFeed(
        cast(AsyncMqttClient, mqtt), Topics(), Metrics(), 0.0, 1000, busy_rate=10, busy=lambda: True
    )
    for i in range(100):
        live.offer("gw-1", reading(f"cp-{i:02d}", 1))
    await asyncio.sleep(0.3)
    await live.flush()
    assert 1 <= len(mqtt.topics) <= 10  # at most one second's worth of the busy rate


async def test_a_gateway_flooding_with_new_chargers_does_not_hold_back_anothers_values() -> None:
    """1,000 never-published chargers of one gateway and 2 of another, published a moment ago,
    are due with a budget of 10: the budget is shared round-robin per gateway, so the other
    gateway's two values go out in this flush (oldest first would give all 10 to the flood)."""
    mqtt = FakeMqtt()
    live = LiveFeed(cast(AsyncMqttClient, mqtt), Topics(), Metrics(), 0.0, max_rate=10)
    live.offer("gw-calm", reading("calm-1", 1))
    live.offer("gw-calm", reading("calm-2", 1))
    await live.flush()
    await asyncio.sleep(1.0)  # the bucket full again: 10
    for i in range(1000):
        live.offer("gw-flood", reading(f"fl-{i:04d}", 1))
    live.offer("gw-calm", reading("calm-1", 2))
    live.offer("gw-calm", reading("calm-2", 2))
    mqtt.topics.clear()
    await live.flush()
    assert len(mqtt.topics) == 10
    assert {"chargers/v1/live/calm-1", "chargers/v1/live/calm-2"} <= set(mqtt.topics)
    assert live.waiting == 992
