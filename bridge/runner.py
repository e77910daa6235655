"""Take messages in batches, hand them to the processor, acknowledge once they are safe."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bridge.settings import BridgeSettings
from processor.pipeline import Processor
from processor.writer import Writer
from telemetry_common.mqtt import AsyncMqttClient, Received

log = logging.getLogger(__name__)


async def next_batch(
    queue: asyncio.Queue[Received], max_messages: int, max_wait_s: float
) -> list[Received]:
    """Wait for one message, then take more until ``max_messages`` or ``max_wait_s`` passed."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_messages:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(left):
                batch.append(await queue.get())
        except TimeoutError:
            break
    return batch


async def run_bridge(settings: BridgeSettings) -> None:
    topics = settings.topics
    async with (
        Writer(settings.influx) as writer,
        AsyncMqttClient(
            settings.mqtt,
            client_id=settings.client_id,
            subscriptions=(topics.shared_readings(settings.share_group),),
            manual_ack=True,
            receive_maximum=settings.max_inflight,
        ) as client,
    ):
        processor = Processor(
            writer,
            client,
            topics,
            max_future=timedelta(seconds=settings.max_future_s),
            max_backoff_s=settings.max_backoff_s,
        )
        log.info(
            "bridge %s consuming %s into %s (%s API)",
            settings.client_id,
            topics.shared_readings(settings.share_group),
            settings.influx.url,
            settings.influx.api,
        )
        while True:
            batch = await next_batch(
                client.messages, settings.batch_max_messages, settings.batch_max_wait_s
            )
            await processor.process(batch)
            for msg in batch:
                msg.ack()
