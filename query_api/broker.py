"""The API's MQTT session: feeds the live mirror, publishes HTTP-ingested batches (QoS 1) and
takes the bridges' stored acknowledgements of them.

One MQTT 5 connection over TLS with the API's certificate (CN ``telemetry-api``, whose ACL lets
it read ``{root}/live/#``, ``{root}/+/state`` and ``{root}/+/stored``, write
``{root}/+/readings``, and read and write ``{root}/alarms/#`` for the alarms), a clean session
(retained values are sent again on every subscribe, so nothing is lost by starting fresh; an
acknowledgement sent while the API was away is lost, and the request waiting for it times out:
see :mod:`query_api.acks`), and paho's reconnect loop. While the broker is unreachable the API
keeps serving: ``latest`` reads InfluxDB, ingest answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from query_api.acks import StoredAcks
from query_api.latest.mirror import LiveMirror
from query_api.settings import ApiSettings
from telemetry_common.mqtt import AsyncMqttClient, NotConnectedError, PublishLostError

log = logging.getLogger(__name__)

#: How long an ingest publish may wait for the broker's PUBACK.
PUBLISH_TIMEOUT_S = 10.0

#: Live messages applied between two yields to the event loop.
FEED_SLICE = 100


class Publisher(Protocol):
    """What ingest needs from the broker (tests pass a fake)."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...


class BrokerLink:
    """``async with BrokerLink(settings, mirror, acks)``: connects in the background and keeps
    the mirror fed (and ``acks`` given their acknowledgements) until the block ends."""

    def __init__(
        self,
        settings: ApiSettings,
        mirror: LiveMirror,
        acks: StoredAcks | None = None,
        alarms: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        """``alarms``: takes every message of ``{root}/alarms/+/+`` (the alarm evaluator's
        view of the retained alarms); None: not subscribed."""
        if settings.mqtt is None:
            raise ValueError("BrokerLink needs settings.mqtt")
        topics = settings.topics
        self._mirror = mirror
        self._acks = acks
        self._alarms = alarms
        stored = acks.subscriptions if acks is not None else ()
        alarm_topics = (topics.all_alarms(),) if alarms is not None else ()
        self._timeout_s = PUBLISH_TIMEOUT_S
        self._client = AsyncMqttClient(
            # A clean session that ends with the connection: nothing queues for a gone API.
            settings.mqtt.model_copy(update={"session_expiry_s": 0}),
            # Random per process: unguessable, and two API processes never take each other's.
            client_id=f"telemetry-api-{secrets.token_hex(4)}",
            subscriptions=(
                f"{topics.root}/live/+",
                f"{topics.root}/+/state",
                *stored,
                *alarm_topics,
            ),
            receive_maximum=1000,
            clean_start=True,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def last_error(self) -> str | None:
        return self._client.last_connect_error

    async def __aenter__(self) -> BrokerLink:
        await self._client.__aenter__()
        self._task = asyncio.create_task(self._feed(), name="live-mirror")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(*exc)

    async def _feed(self) -> None:
        queue = self._client.messages
        acks = self._acks
        applied = 0
        while True:
            msg = await queue.get()
            try:
                if acks is not None and acks.handles(msg.topic):
                    acks.apply(msg.topic, msg.payload)
                elif self._alarms is not None and self._alarms(msg.topic, msg.payload):
                    pass
                else:
                    self._mirror.apply(msg.topic, msg.payload, time.monotonic())
            except Exception:  # one bad message must not stop the mirror
                log.exception("message on %s not applied", msg.topic)
            applied += 1
            if applied % FEED_SLICE == 0:
                # A burst (thousands of new chargers) is taken in slices: get() does not yield
                # while messages are queued, and requests wait for the loop meanwhile.
                await asyncio.sleep(0)

    async def publish(
        self, topic: str, payload: bytes, *, user_properties: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """QoS 1 (with MQTT 5 ``user_properties``: a dead letter's replay names it), returns
        after a successful PUBACK; NotConnectedError, PublishRejectedError,
        NoSubscribersError (PUBACK 0x10: no bridge subscribed, nobody will store it, as the
        edge treats it) or PublishLostError (also when no PUBACK came within the timeout)."""
        if not self._client.connected:
            raise NotConnectedError(self._client.client_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.publish(
                    topic, payload, require_subscribers=True, user_properties=user_properties
                )
        except TimeoutError as exc:
            raise PublishLostError(topic) from exc

    async def retain(self, topic: str, payload: bytes) -> None:
        """QoS 1, retained (an empty payload clears the topic); returns after the PUBACK.
        NotConnectedError, PublishRejectedError or PublishLostError."""
        if not self._client.connected:
            raise NotConnectedError(self._client.client_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.publish(topic, payload, retain=True)
        except TimeoutError as exc:
            raise PublishLostError(topic) from exc
