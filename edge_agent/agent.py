"""The agent: captures go into the outbox; batches leave it only after the broker's PUBACK.

Three tasks share one outbox and one MQTT session: ``capture`` (a source -> ``Outbox.append``),
``publish`` (:class:`edge_agent.publisher.Publisher`) and ``commands``
(:class:`edge_agent.commands.Commands`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from edge_agent.capture import Capture
from edge_agent.clock import ClockWatch
from edge_agent.commands import Commands
from edge_agent.heartbeat import GatewayState, state_payload
from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters, Publisher, build_payload
from edge_agent.series import UniqueTs
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Pace
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
    Will,
)

__all__ = [
    "Counters",
    "EdgeAgent",
    "GatewayState",
    "build_payload",
    "mqtt_client",
    "state_payload",
]

log = logging.getLogger(__name__)


def mqtt_client(
    settings: EdgeSettings, *, commands: bool = True, gateway: GatewayState | None = None
) -> AsyncMqttClient:
    """The gateway's MQTT session: client id = gateway id (a persistent session), birth and last
    will on its state topic, its command topics and stored acknowledgements, reconnects with
    capped backoff and jitter. The birth, built afresh on every connect, is ``gateway``'s full
    state (edge_agent.heartbeat); without it, ``{"state": "online", "ts"}`` only."""
    topics, gw = settings.topics, settings.gateway_id
    state = topics.state(gw)
    online = gateway.online if gateway is not None else lambda: state_payload("online")
    subscriptions: tuple[str, ...] = (topics.cmd_all(gw),) if commands else ()
    if settings.delete_after == "stored":
        subscriptions += (topics.stored(gw),)
    return AsyncMqttClient(
        settings.mqtt,
        client_id=gw,
        subscriptions=subscriptions,
        will=Will(state, state_payload("offline")),
        birth=lambda: Will(state, online()),
        reconnect_jitter=True,
        reconnect_max_s=settings.reconnect_max_s,
    )


async def route(
    settings: EdgeSettings,
    client: AsyncMqttClient,
    publisher: Publisher,
    commands: Commands | None,
    clock: ClockWatch | None = None,
) -> None:
    """Hand each received message to its owner until cancelled: stored acknowledgements to the
    publisher (in order) and to ``clock`` (the bridge's clock is in them), commands to
    ``commands`` (None: not served, ignored)."""
    stored = settings.topics.stored(settings.gateway_id)
    while True:
        msg = await client.messages.get()
        if msg.topic == stored:
            if clock is not None:
                clock.observe_ack(msg.payload)
            try:
                await publisher.confirm(msg.payload)
            except Exception:
                # The rows stay and are sent again: an acknowledgement is never worth the agent.
                log.exception("stored acknowledgement not applied")
        elif commands is not None:
            await commands.submit(msg)
        else:
            log.warning("ignored a message on %s", msg.topic)


class EdgeAgent:
    def __init__(
        self,
        settings: EdgeSettings,
        outbox: Outbox,
        client: AsyncMqttClient,
        *,
        pace: Pace | None = None,
        gateway: GatewayState | None = None,
    ) -> None:
        self._settings = settings
        self._gateway = gateway
        self._outbox = outbox
        self._client = client
        self.counters = Counters()
        self.clock = ClockWatch(settings.clock_max_skew_s, timedelta(days=settings.max_age_days))
        self.publisher = Publisher(settings, outbox, client, self.counters)
        self.commands = Commands(
            settings.gateway_id,
            settings.topics,
            outbox,
            client,
            self.publisher,
            self.counters,
            pace,
        )
        if gateway is not None:
            publisher = self.publisher
            gateway.unconfirmed = lambda: publisher.unconfirmed
            gateway.clock = self.clock

    async def capture(self, source: AsyncIterator[list[Capture]]) -> None:
        """Store every capture of ``source`` durably, in the order they come, each series' ts
        made unique (:mod:`edge_agent.series`)."""
        unique = UniqueTs(await asyncio.to_thread(self._outbox.series_marks))
        async for captures in source:
            stamped, marks = unique.apply(captures)
            self.clock.check_ages(stamped)
            bodies = [c.to_body() for c in stamped]
            seqs = await asyncio.to_thread(self._outbox.append, bodies, marks)
            self.counters.captured += len(seqs)
            self.publisher.notify()

    async def run(self, source: AsyncIterator[list[Capture]]) -> None:
        """Capture, publish and answer commands; when a finite source ends, send what is left
        and return. Runs until cancelled for an endless source."""
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            publisher = tg.create_task(self.publisher.run(stop), name="publish")
            inbox = tg.create_task(
                route(self._settings, self._client, self.publisher, self.commands, self.clock),
                name="inbox",
            )
            heartbeat = None
            if self._gateway is not None:
                heartbeat = tg.create_task(
                    self._gateway.heartbeat(
                        self._client,
                        self._settings.topics.state(self._settings.gateway_id),
                        self._settings.state_interval_s,
                    ),
                    name="heartbeat",
                )
            try:
                await self.capture(source)
                stop.set()  # a finite source ended: send what is left, then stop
                self.publisher.notify()
                await publisher
            finally:
                inbox.cancel()
                if heartbeat is not None:
                    heartbeat.cancel()
                self.commands.cancel()

    async def say_offline(self) -> None:
        """A clean disconnect sends no last will, so announce the state ourselves."""
        if self._client.connected:
            topic = self._settings.topics.state(self._settings.gateway_id)
            try:
                async with asyncio.timeout(2.0):
                    await self._client.publish(topic, state_payload("offline"), retain=True)
            except (TimeoutError, PublishLostError, NotConnectedError, PublishRejectedError):
                log.warning("could not publish the offline state; the broker's will covers it")
