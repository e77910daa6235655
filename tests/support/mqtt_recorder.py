"""Paho clients that record what they see, for tests of the broker's fences.

:class:`Recorder` watches any client (messages, PUBACK and SUBACK reason codes; with
``connection=True`` also its CONNACK and disconnect) and fails the test when an answer does not
come. :class:`Session` is a client with its own recorder whose ``try_*`` methods report what
happened instead (a refused or dropped client is what a security test expects).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.tls import client_context

WAIT_S = 10.0
#: The MQTT 5 reason code "Not authorized" (a PUBACK or SUBACK the ACL refused).
NOT_AUTHORIZED = 135


@dataclass
class Recorder:
    """Collects what one paho client sees: messages, PUBACK and SUBACK reason codes (and, when
    attached with ``connection=True``, the CONNACK and the disconnect reason)."""

    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, list[int]] = field(default_factory=dict)
    connack: str | None = None
    disconnected: str | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    wait_s: float = WAIT_S

    def attach(self, client: mqtt.Client, *, connection: bool = False) -> mqtt.Client:
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        if connection:
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self.changed:
            self.connack = str(rc)
            self.changed.notify_all()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self.changed:
            self.disconnected = str(rc)
            self.changed.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(msg)
            self.changed.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self.changed:
            self.pubacks[mid] = rc.value
            self.changed.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self.changed:
            self.subacks[mid] = [rc.value for rc in rcs]
            self.changed.notify_all()

    def payloads(self) -> list[bytes]:
        with self.changed:
            return [bytes(m.payload) for m in self.messages]

    def topics_seen(self) -> list[str]:
        with self.changed:
            return [m.topic for m in self.messages]

    def wait_for_payload(self, payload: bytes) -> mqtt.MQTTMessage:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(m.payload == payload for m in self.messages), self.wait_s
            )
            assert ok, f"{payload!r} not received within {self.wait_s}s"
            return next(m for m in self.messages if m.payload == payload)

    def publish(self, client: mqtt.Client, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.changed:
            assert self.changed.wait_for(lambda: info.mid in self.pubacks, self.wait_s), "no PUBACK"
            return self.pubacks[info.mid]

    def subscribe(self, client: mqtt.Client, topic: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        rc, mid = client.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.subacks, self.wait_s), "no SUBACK"
            return self.subacks[mid]


@dataclass(kw_only=True)
class Session(Recorder):
    """One MQTT 5 client over TLS (or anonymous on loopback) and what it saw."""

    client: mqtt.Client

    @property
    def connected(self) -> bool:
        return self.connack == "Success" and self.disconnected is None

    def try_publish(self, topic: str, payload: bytes) -> int | str:
        """Publish at QoS 1: the PUBACK reason code, or what happened instead."""
        info = self.client.publish(topic, payload, qos=1)
        with self.changed:
            self.changed.wait_for(
                lambda: info.mid in self.pubacks or self.disconnected is not None, self.wait_s
            )
            if info.mid in self.pubacks:
                return self.pubacks[info.mid]
        return f"no PUBACK (disconnected: {self.disconnected})"

    def try_subscribe(self, topic: str) -> list[int] | str:
        """Subscribe at QoS 1: the SUBACK reason codes, or what happened instead."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        with self.changed:
            self.changed.wait_for(
                lambda: mid in self.subacks or self.disconnected is not None, self.wait_s
            )
            if mid is not None and mid in self.subacks:
                return self.subacks[mid]
        return f"no SUBACK (disconnected: {self.disconnected})"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def open_session(
    port: int,
    *,
    ca_file: str | Path,
    cert: tuple[Path, Path] | None,
    client_id: str | None = None,
    clean_start: bool = True,
    session_expiry: int = 0,
    host: str = "127.0.0.1",
) -> Session:
    """Connect a :class:`Session` to ``host:port`` (TLS with ``cert`` when given, else
    plaintext) and return once the broker answered or dropped it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"sec-{uuid.uuid4().hex[:10]}",
        protocol=mqtt.MQTTv5,
    )
    s = Session(client=client)
    s.attach(client, connection=True)
    if cert is not None:
        client.tls_set_context(client_context(Path(ca_file), cert[0], cert[1]))
    props = None
    if session_expiry:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
    client.connect(host, port, keepalive=30, clean_start=clean_start, properties=props)
    client.loop_start()
    with s.changed:
        s.changed.wait_for(lambda: s.connack is not None or s.disconnected is not None, s.wait_s)
    return s
