"""The agent: captures go into the outbox; batches leave it only after the broker's PUBACK."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from edge_agent.capture import Capture
from edge_agent.outbox import Outbox, OutboxRow
from edge_agent.settings import EdgeSettings
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
    Will,
)
from telemetry_common.schema import SCHEMA_ID

log = logging.getLogger(__name__)


def build_payload(gateway_id: str, rows: list[OutboxRow]) -> bytes:
    """The ReadingBatch JSON for ``rows`` (bodies are stored already validated)."""
    head = b'{"schema":"%s","gateway_id":"%s","readings":[' % (
        SCHEMA_ID.encode(),
        gateway_id.encode(),
    )
    return head + b",".join(r.reading_json() for r in rows) + b"]}"


def state_payload(state: str) -> bytes:
    return orjson.dumps({"state": state, "ts": datetime.now(UTC).isoformat()})


def mqtt_client(settings: EdgeSettings) -> AsyncMqttClient:
    """The gateway's MQTT session: client id = gateway id, birth and last will on its state."""
    state = settings.topics.state(settings.gateway_id)
    return AsyncMqttClient(
        settings.mqtt,
        client_id=settings.gateway_id,
        will=Will(state, state_payload("offline")),
        birth=Will(state, state_payload("online")),
    )


@dataclass(slots=True)
class Counters:
    captured: int = 0
    published: int = 0
    batches: int = 0
    parked: int = 0
    retries: int = 0


class EdgeAgent:
    def __init__(self, settings: EdgeSettings, outbox: Outbox, client: AsyncMqttClient) -> None:
        self._settings = settings
        self._outbox = outbox
        self._client = client
        self._topic = settings.topics.readings(settings.gateway_id)
        self._new_data = asyncio.Event()
        self.counters = Counters()

    async def capture(self, source: AsyncIterator[list[Capture]]) -> None:
        """Store every capture of ``source`` durably, in the order they come."""
        async for captures in source:
            bodies = [c.to_body() for c in captures]
            await asyncio.to_thread(self._outbox.append, bodies)
            self.counters.captured += len(bodies)
            self._new_data.set()

    async def publish_forever(self) -> None:
        backoff = 0.5
        while True:
            await self._client.wait_connected()
            self._new_data.clear()
            try:
                sent = await self.publish_batch()
            except (PublishLostError, NotConnectedError, TimeoutError) as exc:
                self.counters.retries += 1
                log.warning("batch not acknowledged (%s); it stays in the outbox", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if sent == 0:
                try:
                    async with asyncio.timeout(1.0):
                        await self._new_data.wait()
                except TimeoutError:
                    pass

    async def publish_batch(self) -> int:
        """Publish the oldest batch; return how many readings left the outbox (0: none pending)."""
        s = self._settings
        rows = await asyncio.to_thread(
            self._outbox.oldest, s.batch_max_readings, s.batch_max_bytes - 256
        )
        if not rows:
            return 0
        seqs = [r.seq for r in rows]
        try:
            async with asyncio.timeout(s.publish_timeout_s):
                await self._client.publish(self._topic, build_payload(s.gateway_id, rows))
        except PublishRejectedError as exc:
            # Permanent: retrying cannot help, deleting would lose data. Park and count.
            await asyncio.to_thread(self._outbox.park, seqs, exc.reason)
            self.counters.parked += len(seqs)
            log.error(
                "broker refused a batch of %d readings (%s); parked seq %d..%d",
                len(seqs),
                exc.reason,
                seqs[0],
                seqs[-1],
            )
            return len(seqs)
        await asyncio.to_thread(self._outbox.delete, seqs)
        self.counters.published += len(seqs)
        self.counters.batches += 1
        return len(seqs)

    async def drain(self) -> None:
        """Publish until the outbox is empty (used at the end of a finite source)."""
        while True:
            await self._client.wait_connected()
            try:
                if await self.publish_batch() == 0:
                    return
            except (PublishLostError, NotConnectedError, TimeoutError) as exc:
                log.warning("batch not acknowledged (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def say_offline(self) -> None:
        """A clean disconnect sends no last will, so announce the state ourselves."""
        if self._client.connected:
            topic = self._settings.topics.state(self._settings.gateway_id)
            try:
                async with asyncio.timeout(2.0):
                    await self._client.publish(topic, state_payload("offline"), retain=True)
            except (TimeoutError, PublishLostError, NotConnectedError, PublishRejectedError):
                log.warning("could not publish the offline state; the broker's will covers it")
