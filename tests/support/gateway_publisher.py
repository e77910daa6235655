"""Publishing as a gateway: QoS 1 with the PUBACK's reason code checked."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


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
