"""The broker's fences (DESIGN.md guarantee 6), tried against the real Mosquitto with its real
configuration: certificates are required, each gateway writes only its own topics, the bridge
reads every gateway through a shared subscription, anonymous loopback clients only read feeds."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import pki as pki_mod
from telemetry_common.tls import client_context
from tests.support.fixtures import BrokerInfo, MqttClientFactory

pytestmark = pytest.mark.integration

WAIT_S = 10.0
#: After a positive control message has arrived, how long a forbidden one gets to show up.
GRACE_S = 0.5
NOT_AUTHORIZED = 135


@dataclass
class Recorder:
    """Collects what one paho client sees: messages, PUBACK and SUBACK reason codes."""

    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, list[int]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def attach(self, client: mqtt.Client) -> mqtt.Client:
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(msg)
            self.changed.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties
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

    def wait_for_payload(self, payload: bytes) -> mqtt.MQTTMessage:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(m.payload == payload for m in self.messages), WAIT_S
            )
            assert ok, f"{payload!r} not received within {WAIT_S}s"
            return next(m for m in self.messages if m.payload == payload)

    def publish(self, client: mqtt.Client, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.changed:
            assert self.changed.wait_for(lambda: info.mid in self.pubacks, WAIT_S), "no PUBACK"
            return self.pubacks[info.mid]

    def subscribe(self, client: mqtt.Client, topic: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        rc, mid = client.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.subacks, WAIT_S), "no SUBACK"
            return self.subacks[mid]


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


def _connect_outcome(client: mqtt.Client, host: str, port: int) -> str:
    """'connected' if the broker accepted the client, else a description of the refusal."""
    connack: list[ReasonCode] = []
    dropped = threading.Event()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        connack.append(rc)

    def on_disconnect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        dropped.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:  # the TLS handshake itself failed (TLS 1.2 reports it here)
        return f"handshake refused: {exc!r}"
    client.loop_start()
    dropped.wait(WAIT_S)
    if connack and not connack[0].is_failure:
        return "connected"
    return f"refused: connack={connack} dropped={dropped.is_set()}"


# --- the TLS listener requires a certificate from our CA ------------------------------------


def test_tls_listener_refuses_a_client_without_certificate(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """A client that verifies the broker but presents no certificate never gets a CONNACK."""
    client = mqtt_client(None, connect=False)
    client.tls_set_context(client_context(broker.ca_file, None, None))
    outcome = _connect_outcome(client, broker.host, broker.tls_port)
    assert outcome != "connected"
    assert not client.is_connected()


def test_tls_listener_refuses_a_certificate_from_another_ca(
    broker: BrokerInfo, mqtt_client: MqttClientFactory, tmp_path: Path
) -> None:
    """A client certificate with the right CN but signed by a foreign CA is refused."""
    pki_mod.init(tmp_path / "other")
    cert, key = pki_mod.issue_gateway(tmp_path / "other", "gw-a")
    client = mqtt_client(None, connect=False)
    client.tls_set_context(client_context(broker.ca_file, cert, key))
    outcome = _connect_outcome(client, broker.host, broker.tls_port)
    assert outcome != "connected"
    assert not client.is_connected()


def test_plaintext_client_cannot_claim_an_identity(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """On the loopback listener a client that claims the bridge's username is refused
    (otherwise it would get the bridge's ACL without its certificate)."""
    client = mqtt_client(None, connect=False)
    client.username_pw_set(pki_mod.BRIDGE_IDENTITY)
    outcome = _connect_outcome(client, broker.host, broker.local_port)
    assert outcome.startswith("refused")
    assert "Not authorized" in outcome or "Bad user name or password" in outcome


# --- gateways are fenced to their own topics ------------------------------------------------


def test_gateway_cannot_publish_to_another_gateways_readings(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """gw-a publishing to gw-b's readings topic gets PUBACK 135 (Not authorized) and the bridge
    receives nothing, while gw-a's own readings, published next, do arrive."""
    topics = broker.topics
    bridge_rec, gw_rec = Recorder(), Recorder()
    bridge = bridge_rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    assert bridge_rec.subscribe(bridge, topics.all_readings()) == [1]
    gw_a = gw_rec.attach(mqtt_client("gw-a"))

    forged, own = _token(), _token()
    assert gw_rec.publish(gw_a, topics.readings("gw-b"), forged) == NOT_AUTHORIZED
    assert gw_rec.publish(gw_a, topics.readings("gw-a"), own) < 0x80

    assert bridge_rec.wait_for_payload(own).topic == topics.readings("gw-a")
    assert forged not in bridge_rec.payloads()


def test_gateway_cannot_write_the_live_or_deadletter_feeds(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """A gateway cannot forge the processor's live or dead-letter messages."""
    topics = broker.topics
    rec = Recorder()
    gw_a = rec.attach(mqtt_client("gw-a"))
    assert rec.publish(gw_a, topics.live("gw-a-cp001"), _token()) == NOT_AUTHORIZED
    assert rec.publish(gw_a, topics.deadletter("gw-a"), _token()) == NOT_AUTHORIZED


def test_bridge_may_subscribe_to_the_processors_shared_subscription(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """The bridge identity's SUBSCRIBE to $share/processors/{root}/+/readings is granted QoS 1."""
    rec = Recorder()
    bridge = rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    assert broker.topics.shared_readings() == "$share/processors/chargers/v1/+/readings"
    assert rec.subscribe(bridge, broker.topics.shared_readings()) == [1]


def test_gateway_readings_reach_the_bridges_shared_subscription(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """gw-a's readings on its own topic are delivered to the bridge's shared subscription.

    The share group is unique to this test: the ACL ignores the group name, and other tests
    may leave offline persistent members in group ``processors`` that Mosquitto would queue
    some messages for."""
    topics = broker.topics
    bridge_rec, gw_rec = Recorder(), Recorder()
    bridge = bridge_rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    group = f"t{uuid.uuid4().hex[:12]}"
    assert bridge_rec.subscribe(bridge, topics.shared_readings(group)) == [1]
    gw_a = gw_rec.attach(mqtt_client("gw-a"))
    payload = _token()
    assert gw_rec.publish(gw_a, topics.readings("gw-a"), payload) < 0x80
    msg = bridge_rec.wait_for_payload(payload)
    assert msg.topic == topics.readings("gw-a")
    assert msg.qos == 1


# --- anonymous loopback clients only read the feeds -----------------------------------------


def test_anonymous_local_client_reads_live_and_deadletter(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """An anonymous client on the loopback listener receives what the bridge publishes on
    live/# and deadletter/#."""
    topics = broker.topics
    anon_rec, bridge_rec = Recorder(), Recorder()
    anon = anon_rec.attach(mqtt_client(None))
    assert anon_rec.subscribe(anon, f"{topics.root}/live/#") == [1]
    assert anon_rec.subscribe(anon, f"{topics.root}/deadletter/#") == [1]
    bridge = bridge_rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    live, dead = _token(), _token()
    assert bridge_rec.publish(bridge, topics.live(f"cp-{live.decode()[:8]}"), live) < 0x80
    assert bridge_rec.publish(bridge, topics.deadletter("gw-a"), dead) < 0x80
    anon_rec.wait_for_payload(live)
    assert anon_rec.wait_for_payload(dead).topic == topics.deadletter("gw-a")


def test_anonymous_local_client_cannot_read_readings(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """An anonymous subscriber to {root}/+/readings receives nothing of a gateway's readings
    (Mosquitto grants the wildcard SUBACK and filters each message by the ACL)."""
    topics = broker.topics
    anon_rec, bridge_rec, gw_rec = Recorder(), Recorder(), Recorder()
    anon = anon_rec.attach(mqtt_client(None))
    anon_rec.subscribe(anon, topics.all_readings())
    anon_rec.subscribe(anon, topics.readings("gw-a"))
    bridge = bridge_rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    bridge_rec.subscribe(bridge, topics.readings("gw-a"))
    gw_a = gw_rec.attach(mqtt_client("gw-a"))
    payload = _token()
    assert gw_rec.publish(gw_a, topics.readings("gw-a"), payload) < 0x80
    bridge_rec.wait_for_payload(payload)  # the control: the message did go through the broker
    time.sleep(GRACE_S)
    assert payload not in anon_rec.payloads()


@pytest.mark.parametrize("where", ["live", "deadletter", "readings", "state"])
def test_anonymous_local_client_cannot_publish(
    broker: BrokerInfo, mqtt_client: MqttClientFactory, where: str
) -> None:
    """Anonymous QoS 1 publishes on the loopback listener are refused with PUBACK 135."""
    topics = broker.topics
    topic = {
        "live": topics.live("gw-a-cp001"),
        "deadletter": topics.deadletter("gw-a"),
        "readings": topics.readings("gw-a"),
        "state": topics.state("gw-a"),
    }[where]
    rec = Recorder()
    anon = rec.attach(mqtt_client(None))
    assert rec.publish(anon, topic, _token()) == NOT_AUTHORIZED
