"""Batching in the bridge and the live feed's budget (pure asyncio logic, fakes for MQTT)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import cast

from bridge.flow import next_batch
from processor.metrics import Metrics
from processor.outputs.live import LiveFeed
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.schema import Reading, ReadingRow
from telemetry_common.topics import Topics


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
