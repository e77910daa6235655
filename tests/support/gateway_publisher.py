"""Connecting and publishing as a gateway: TLS with its certificate, QoS 1 with the PUBACK's
reason code checked."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.tls import client_context
from tests.support.fixtures import BrokerInfo


class GatewayPublisher:
    """QoS 1 publishes as one gateway identity; ``publish`` returns after a successful PUBACK
    and fails the test on a refusal (reason code >= 0x80) or no PUBACK in ``wait_s``."""

    def __init__(self, client: mqtt.Client, topic: str, wait_s: float = 20.0) -> None:
        self.client = client
        self.topic = topic
        self.wait_s = wait_s
        self._acks: dict[int, int] = {}
        self._lock = threading.Lock()
        client.on_publish = self._on_publish

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._lock:
            self._acks[mid] = rc.value

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        info.wait_for_publish(self.wait_s)
        assert info.is_published(), f"no PUBACK within {self.wait_s}s"
        with self._lock:
            code = self._acks.pop(info.mid)
        assert code < 0x80, f"broker refused the publish: reason code {code:#x}"


def connect_gateway(broker: BrokerInfo, identity: str) -> mqtt.Client:
    """An MQTT 5 client over TLS with ``identity``'s certificate, connected (CONNACK checked)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{identity}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    cert, key = broker.pki.client(identity)
    client.tls_set_context(client_context(broker.ca_file, cert, key))
    connected = threading.Event()
    codes: list[ReasonCode] = []

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        codes.append(rc)
        connected.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port_for(identity), keepalive=30)
    client.loop_start()
    assert connected.wait(10), f"no CONNACK for {identity}"
    assert not codes[0].is_failure, f"broker refused {identity}: {codes[0]}"
    return client
