"""An asyncio face on paho-mqtt 2.x for MQTT 5 over TLS, shared by the edge agent and the bridge.

paho rather than aiomqtt here, because we need what aiomqtt 2.x does not expose: the reason code
of each PUBACK (a refused publish must not count as delivered) and manual acknowledgement of
received messages (the bridge acknowledges only what is stored).

paho's network loop runs in its own thread; every callback is handed to the event loop and
never touches asyncio objects directly. Callbacks are queued and the loop is woken once per
burst, not once per callback: under load a wake-up per PUBACK costs a syscall each and makes
the two threads fight over the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.errors import TelemetryError
from telemetry_common.redact import redact
from telemetry_common.settings import MqttSettings
from telemetry_common.tls import client_context

log = logging.getLogger(__name__)

#: MQTT 5 PUBACK reason code: accepted, but no subscription matched.
_NO_MATCHING_SUBSCRIBERS = 0x10


class MqttError(TelemetryError):
    """Base of the MQTT errors below."""


class NotConnectedError(MqttError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"MQTT client {client_id!r} is not connected")
        self.client_id = client_id


class PublishRejectedError(MqttError):
    """The broker answered a QoS 1 PUBLISH with a failure reason code (a permanent error)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"publish to {topic!r} refused by the broker: {reason} ({reason_code})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason


class NoSubscribersError(MqttError):
    """The broker took the message but no subscription matched it (PUBACK 0x10): nobody will
    receive it. For readings this means "not delivered": the bridge is not subscribed (yet), as
    after a broker restart, which does not restore shared subscriptions of offline sessions."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no subscriber matched {topic!r} (PUBACK 0x10): not delivered")
        self.topic = topic


class PublishLostError(MqttError):
    """The connection dropped before the PUBACK arrived; the message may or may not be stored."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"connection lost before PUBACK for {topic!r}")
        self.topic = topic


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(slots=True)
class Received:
    """A received message; ``ack()`` it once its content is safe (manual-ack clients only)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int
    retain: bool = False
    _ack: Callable[[Received], None] | None = field(default=None, repr=False)
    #: MQTT 5 request/response: where the sender wants the answer, and what to echo with it.
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: MQTT 5 user properties, in the order sent (e.g. ``replay-of`` on a replayed message).
    user_properties: tuple[tuple[str, str], ...] = ()

    def ack(self) -> None:
        if self._ack is not None:
            self._ack(self)


class AsyncMqttClient:
    """MQTT 5 client with TLS, a persistent session, PUBACK-awaiting publish and manual acks.

    Use as ``async with AsyncMqttClient(...) as client``; it connects in the background and
    reconnects with paho's capped exponential backoff. ``subscriptions`` are (re)made on every
    connect; received messages go to ``messages`` (bounded by the broker through the MQTT 5
    Receive Maximum we announce).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        subscriptions: tuple[str, ...] = (),
        manual_ack: bool = False,
        receive_maximum: int = 100,
        will: Will | None = None,
        birth: Will | Callable[[], Will] | None = None,
        clean_start: bool = False,
        reconnect_jitter: bool = False,
        reconnect_max_s: float = 30.0,
        secret_names: tuple[str, ...] = (),
    ) -> None:
        self._settings = settings
        self.client_id = client_id
        #: Names that must appear in no log line or error (the bridges' client id and share
        #: group carry a secret): shown by their public name (telemetry_common.redact).
        self._secret_names = secret_names
        #: How logs and errors name this client.
        self.name = redact(client_id, secret_names)
        self._subscriptions = subscriptions
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self._will = will
        self._birth = birth
        self._clean_start = clean_start
        #: With jitter, each reconnect waits uniform(d/2, d), d = min(max, 2^attempt) seconds,
        #: so a fleet of gateways does not reconnect in lockstep after a broker restart.
        self._reconnect_jitter = reconnect_jitter
        self._reconnect_max_s = reconnect_max_s
        self._attempt = 0
        #: Successful connections so far (the first one included), for metrics.
        self.connects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, tuple[str, asyncio.Future[None], bool]] = {}
        self._generation = 0
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wake_scheduled = False
        self.messages: asyncio.Queue[Received] = asyncio.Queue()
        self.last_connect_error: str | None = None
        self._client = self._build_client()

    def _build_client(self) -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=self._manual_ack,
        )
        s = self._settings
        self._tls = client_context(s.ca_file, s.cert_file, s.key_file)
        c.tls_set_context(self._tls)
        if self._will is not None:
            c.will_set(self._will.topic, self._will.payload, qos=1, retain=self._will.retain)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        # paho's own window of unacknowledged QoS 1 publishes (packet ids are 16-bit).
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = self._on_connect_fail
        return c

    def _schedule_reconnect(self) -> None:
        """Network thread: set paho's next reconnect delay (capped exponential with jitter)."""
        if not self._reconnect_jitter:
            return
        ceiling = min(self._reconnect_max_s, 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret
        # paho waits min_delay first after a reset; floats work although it annotates int.
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncMqttClient:
        self._loop = asyncio.get_running_loop()
        self._start()
        return self

    def _start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive_s,
            clean_start=self._clean_start,
            properties=props,
        )
        self._client.loop_start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._client.disconnect)
        await asyncio.to_thread(self._client.loop_stop)
        self._fail_pending()

    async def reload_certificate(self) -> None:
        """Reconnect presenting the certificate and key now in the settings' files (a renewed
        pair): they are checked first (a broken pair raises ConfigError / ssl.SSLError and the
        session goes on with the old one); then a clean DISCONNECT (no last will), the network
        thread stopped, the TLS context given the new chain, and the same connect as at start.
        Publishes awaiting their PUBACK fail as lost; their owners send them again."""
        s = self._settings
        await asyncio.to_thread(client_context, s.ca_file, s.cert_file, s.key_file)
        log.info("reconnecting with a new client certificate", extra={"client": self.name})
        self._connected.clear()  # a planned disconnect: not reported as a lost connection
        await asyncio.to_thread(self._client.disconnect)
        await asyncio.to_thread(self._client.loop_stop)
        self._fail_pending()
        # paho wraps every new connection with this context: only the network thread, now
        # stopped, reads it, so replacing its chain here is safe.
        self._tls.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        self._start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- publishing ------------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
        require_subscribers: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Publish with QoS 1 and return once the broker acknowledged it with success.

        ``correlation_data`` is sent as the MQTT 5 Correlation Data (answers to requests),
        ``user_properties`` as MQTT 5 User Properties.
        Raises NotConnectedError, PublishRejectedError (permanent) or PublishLostError; with
        ``require_subscribers``, NoSubscribersError when no subscription matched.
        """
        if not self.connected:
            raise NotConnectedError(self.name)
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        props: Properties | None = None
        if correlation_data is not None or user_properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if user_properties:
                props.UserProperty = list(user_properties)
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            # paho saw the connection down before we did, but keeps a QoS 1 message queued and
            # sends it after the reconnect: it may arrive, so it is "lost", not "not sent".
            raise PublishLostError(topic)
        # The PUBACK callback is delivered through call_soon_threadsafe, so it runs after this
        # registration even when the broker answers before publish() returns.
        self._pending[info.mid] = (topic, fut, require_subscribers)
        await fut

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop, in order (called from paho's thread)."""
        self._inbox.append((fn, args))
        if self._wake_scheduled:
            return  # the pending _run_inbox takes this one too
        self._wake_scheduled = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed in between; nobody is left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._run_inbox)

    def _run_inbox(self) -> None:
        # Clear the flag before taking: a callback queued from now on schedules another run.
        self._wake_scheduled = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("MQTT callback %s failed", getattr(fn, "__name__", fn))

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.last_connect_error = str(reason_code)
            log.warning("MQTT connect refused: %s", reason_code, extra={"client": self.name})
            return
        self._attempt = 0
        if self._reconnect_jitter:
            client.reconnect_delay_set(min_delay=1, max_delay=int(self._reconnect_max_s))
        if self._subscriptions:
            client.subscribe([(sub, 1) for sub in self._subscriptions])
        # A callable birth is built afresh on every connect (on paho's network thread).
        birth = self._birth() if callable(self._birth) else self._birth
        if birth is not None:
            client.publish(birth.topic, birth.payload, qos=1, retain=birth.retain)
        self._call(self._set_connected, True, flags.session_present)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._schedule_reconnect()
        self._call(self._set_connected, False, False)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        self._schedule_reconnect()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self._resolve, mid, reason_code.value, str(reason_code))

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for topic, code in zip(self._subscriptions, reason_codes, strict=False):
            shown = redact(topic, self._secret_names)
            if code.is_failure:
                log.error(
                    "subscription to %s refused: %s", shown, code, extra={"client": self.name}
                )
            else:
                log.info("subscribed to %s", shown, extra={"client": self.name})

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        user = getattr(props, "UserProperty", None) or ()
        self._call(
            self._enqueue,
            msg.topic,
            bytes(msg.payload),
            msg.qos,
            msg.mid,
            msg.retain,
            response,
            None if correlation is None else bytes(correlation),
            tuple((str(k), str(v)) for k, v in user),
        )

    # -- event-loop side -------------------------------------------------------------------
    def _set_connected(self, up: bool, session_present: bool) -> None:
        if up:
            self._generation += 1
            self.connects += 1
            self.last_connect_error = None
            log.info(
                "MQTT connected to %s:%s (session present: %s)",
                self._settings.host,
                self._settings.port,
                session_present,
                extra={"client": self.name},
            )
            self._connected.set()
        elif self._connected.is_set():
            log.warning("MQTT connection lost; reconnecting", extra={"client": self.name})
            self._connected.clear()
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for topic, fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(PublishLostError(topic))

    def _resolve(self, mid: int, code: int, reason: str) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None or entry[1].done():
            return
        topic, fut, require_subscribers = entry
        if code >= 0x80:
            fut.set_exception(PublishRejectedError(topic, code, reason))
        elif code == _NO_MATCHING_SUBSCRIBERS and require_subscribers:
            fut.set_exception(NoSubscribersError(topic))
        else:
            fut.set_result(None)

    def _enqueue(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        mid: int,
        retain: bool,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> None:
        ack = self._ack if self._manual_ack else None
        self.messages.put_nowait(
            Received(
                topic,
                payload,
                qos,
                mid,
                self._generation,
                retain,
                _ack=ack,
                response_topic=response_topic,
                correlation_data=correlation_data,
                user_properties=user_properties,
            )
        )

    def _ack(self, msg: Received) -> None:
        # A packet id is only meaningful on the connection that delivered it: after a reconnect
        # the broker redelivers the message with a new id, so a stale ack would hit another one.
        if msg.qos > 0 and msg.generation == self._generation and self.connected:
            self._client.ack(msg.mid, msg.qos)
