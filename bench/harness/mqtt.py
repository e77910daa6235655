"""The paho glue of the benchmarks, once: an MQTT 5 client connected over TLS with a certificate
(or anonymous on the plaintext loopback listener), optionally subscribed, and the PUBACK
bookkeeping of a publishing client with a bounded window.

paho directly rather than ``telemetry_common.mqtt``: the benchmarks stand for gateways and
clients on other machines, and a thread per client with no event loop costs the least CPU
beside the processes being measured.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.tls import client_context

CONNECT_TIMEOUT_S = 20.0

OnMessage = Callable[[paho.Client, object, paho.MQTTMessage], None]


@dataclass(frozen=True)
class Identity:
    """A client certificate: the CA to trust and the client's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class Acks:
    """PUBACKs of one client: counts, refusals (reason code >= 0x80), the time of the last one,
    and at most ``window`` unacknowledged publishes (:meth:`acquire` before each publish)."""

    def __init__(self, window: int) -> None:
        self._sem = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()
        self.acked = 0
        self.refused = 0
        self.last_ack = 0.0

    def on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self.acked += 1
            self.refused += int(reason_code.is_failure)
            self.last_ack = time.time()
        self._sem.release()

    def acquire(self, deadline: float, lost: threading.Event) -> None:
        while not self._sem.acquire(timeout=0.5):
            if lost.is_set():
                raise RuntimeError("MQTT connection lost")
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for PUBACKs")


class Connection:
    """One connected MQTT 5 client (clean start, its network loop in a thread).

    With ``identity``: TLS with that certificate; without: anonymous (the plaintext loopback
    listener). With ``subscribe`` (topic, QoS): returns once the SUBACK arrived. With ``window``:
    :meth:`publish` keeps at most that many QoS 1 publishes unacknowledged (``acks``).
    """

    def __init__(
        self,
        client_id: str,
        port: int,
        *,
        identity: Identity | None = None,
        host: str = "127.0.0.1",
        window: int | None = None,
        subscribe: tuple[str, int] | None = None,
        on_message: OnMessage | None = None,
    ) -> None:
        self.client_id = client_id
        self.lost = threading.Event()
        self.acks = Acks(window or 65_535)
        self._ready = threading.Event()
        self._subscribe = subscribe
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if identity is not None:
            self.client.tls_set_context(
                client_context(identity.ca_file, identity.cert_file, identity.key_file)
            )
        if window is not None:
            # paho's own window equals ours, so nothing waits in paho's internal queue.
            self.client.max_inflight_messages_set(window)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self.acks.on_publish
        if on_message is not None:
            self.client.on_message = on_message
        self.client.connect(host, port, keepalive=60, clean_start=True)
        self.client.loop_start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self.lost.is_set():
            self.close()
            raise RuntimeError(f"{client_id}: could not connect (and subscribe) to the broker")

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            print(f"{self.client_id}: connect refused: {reason_code}", file=sys.stderr)
            self.lost.set()
            self._ready.set()
        elif self._subscribe is None:
            self._ready.set()
        else:
            client.subscribe(*self._subscribe)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._ready.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._ready.is_set() and not self.lost.is_set():
            print(f"{self.client_id}: disconnected: {reason_code}", file=sys.stderr)
        self.lost.set()

    def publish(self, topic: str, payload: bytes, deadline: float) -> None:
        """A QoS 1 publish once the window has room (at most until ``deadline``, monotonic)."""
        self.reserve(deadline)
        self.send(topic, payload)

    def reserve(self, deadline: float) -> None:
        """Wait for room in the window (then :meth:`send`, to time the publish itself)."""
        self.acks.acquire(deadline, self.lost)

    def send(self, topic: str, payload: bytes) -> None:
        """A QoS 1 publish in the room :meth:`reserve` made."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")

    def wait_acked(self, sent: int, deadline: float) -> None:
        """Until ``sent`` publishes were acknowledged; fails on a lost connection or timeout."""
        while self.acks.acked < sent:
            if time.monotonic() > deadline or self.lost.is_set():
                raise RuntimeError(f"{sent - self.acks.acked} publishes not acknowledged")
            time.sleep(0.005)

    def close(self) -> None:
        self.lost.set()  # a disconnect we asked for is not worth a message
        self.client.disconnect()
        self.client.loop_stop()
