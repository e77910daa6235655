"""What reaches the broker from a gateway, seen the way the bridge sees it: a persistent-session
MQTT 5 subscriber with the bridge's certificate that keeps every reading by seq."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from processor.outputs.acks import ack_payload
from provisioning.pki import BRIDGE_IDENTITY
from telemetry_common.tls import client_context
from tests.support.fixtures import BrokerInfo


class Collector:
    """A persistent-session MQTT 5 subscriber (bridge identity) keeping every reading by seq,
    and, as a bridge does once it stored them, acknowledging them on the gateway's stored topic
    (``acknowledge=False``: never, as a cloud without stored acknowledgements)."""

    def __init__(self, broker: BrokerInfo, topic: str, *, acknowledge: bool = True) -> None:
        self._topics = broker.topics
        self._acknowledge = acknowledge
        self.readings: dict[int, dict[str, Any]] = {}
        self.arrived: dict[int, float] = {}  # seq -> wall-clock time of its first arrival
        self.messages = 0
        self._lock = threading.Lock()
        self._up = threading.Event()
        cert, key = broker.pki.client(BRIDGE_IDENTITY)
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        c.tls_set_context(client_context(broker.ca_file, cert, key))
        c.reconnect_delay_set(1, 2)
        c.on_connect = lambda cl, _u, _f, rc, _p: self._on_connect(cl, rc, topic)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect_async(broker.host, broker.service_port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self._up.wait(10):
            raise TimeoutError("collector did not connect")

    def _on_connect(self, client: mqtt.Client, rc: ReasonCode, topic: str) -> None:
        if not rc.is_failure:
            client.subscribe(topic, qos=1)
            self._up.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        batch = orjson.loads(msg.payload)
        now = time.time()
        with self._lock:
            self.messages += 1
            for r in batch["readings"]:
                self.readings[r["seq"]] = r
                self.arrived.setdefault(r["seq"], now)
        if self._acknowledge:  # kept (in memory): tell the gateway, as a bridge would
            seqs = [r["seq"] for r in batch["readings"]]
            topic = self._topics.stored(batch["gateway_id"])
            _c.publish(topic, ack_payload(batch.get("epoch"), seqs), qos=1)

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self.readings)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
