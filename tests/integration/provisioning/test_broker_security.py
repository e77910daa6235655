"""The broker's fences (docs/design.md guarantee 6), tried against the real Mosquitto with its real
configuration: certificates are required, each gateway writes only its own topics, the bridge
reads every gateway through a shared subscription, anonymous loopback clients only read feeds."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from provisioning import pki as pki_mod
from telemetry_common.tls import client_context
from tests.support.fixtures import BrokerInfo, MqttClientFactory
from tests.support.mqtt_probe import paho_connect_outcome
from tests.support.mqtt_recorder import NOT_AUTHORIZED, Recorder

pytestmark = pytest.mark.integration

#: After a positive control message has arrived, how long a forbidden one gets to show up.
GRACE_S = 0.5


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


# --- the TLS listener requires a certificate from our CA ------------------------------------


def test_tls_listener_refuses_a_client_without_certificate(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """A client that verifies the broker but presents no certificate never gets a CONNACK."""
    client = mqtt_client(None, connect=False)
    client.tls_set_context(client_context(broker.ca_file, None, None))
    outcome = paho_connect_outcome(client, broker.host, broker.tls_port)
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
    outcome = paho_connect_outcome(client, broker.host, broker.tls_port)
    assert outcome != "connected"
    assert not client.is_connected()


def test_plaintext_client_cannot_claim_an_identity(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """On the loopback listener a client that claims the bridge's username is refused
    (otherwise it would get the bridge's ACL without its certificate)."""
    client = mqtt_client(None, connect=False)
    client.username_pw_set(pki_mod.BRIDGE_IDENTITY)
    outcome = paho_connect_outcome(client, broker.host, broker.local_port)
    assert outcome.startswith("refused")
    assert "Not authorized" in outcome or "Bad user name or password" in outcome


# --- a gateway cannot take another's session; services have a listener of their own --------


def test_gateway_cannot_take_another_gateways_session(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """gw-b connecting with gw-a's client id does not disconnect gw-a: the gateway listener
    replaces every client id by the certificate's CN (``use_username_as_clientid``), so gw-b
    gets a session of its own. gw-a keeps publishing; gw-b still cannot write gw-a's topics."""
    rec_a, rec_b = Recorder(), Recorder()
    gw_a = mqtt_client("gw-a", client_id="gw-a")
    rec_a.attach(gw_a, connection=True)
    gw_b = rec_b.attach(mqtt_client("gw-b", client_id="gw-a"))
    assert rec_b.publish(gw_b, broker.topics.readings("gw-b"), _token()) < 0x80
    time.sleep(1.0)
    assert rec_a.disconnected is None, f"gw-a was disconnected: {rec_a.disconnected}"
    assert gw_a.is_connected()
    assert rec_a.publish(gw_a, broker.topics.readings("gw-a"), _token()) < 0x80
    assert rec_b.publish(gw_b, broker.topics.readings("gw-a"), _token()) == NOT_AUTHORIZED


@pytest.mark.parametrize("client_id", ["gw-b/x", "gw-b+", "#"])
def test_the_gateway_listener_ignores_the_client_id(
    broker: BrokerInfo, mqtt_client: MqttClientFactory, client_id: str
) -> None:
    """Whatever client id a gateway sends, its session is its CN's: it writes its own
    readings, never another gateway's."""
    rec = Recorder()
    gw_b = rec.attach(mqtt_client("gw-b", client_id=client_id))
    assert rec.publish(gw_b, broker.topics.readings("gw-b"), _token()) < 0x80
    assert rec.publish(gw_b, broker.topics.readings("gw-a"), _token()) == NOT_AUTHORIZED


def test_services_listener_refuses_a_gateway_certificate(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """The services listener (no client id replacement: bridges share one CN) trusts only the
    services CA: a gateway certificate never gets a CONNACK there, so it cannot use a service's
    or another gateway's client id through it."""
    cert, key = broker.pki.client("gw-a")
    client = mqtt_client(None, client_id="gw-b", connect=False)
    client.tls_set_context(client_context(broker.ca_file, cert, key))
    outcome = paho_connect_outcome(client, broker.host, broker.service_port)
    assert outcome != "connected"
    assert not client.is_connected()


def test_gateway_listener_refuses_a_service_certificate(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """Service certificates come from the services CA, which the gateway listener does not
    trust; on the services listener the same certificate connects (the control)."""
    cert, key = broker.pki.client(pki_mod.BRIDGE_IDENTITY)
    client = mqtt_client(None, connect=False)
    client.tls_set_context(client_context(broker.ca_file, cert, key))
    assert paho_connect_outcome(client, broker.host, broker.tls_port) != "connected"
    assert mqtt_client(pki_mod.BRIDGE_IDENTITY).is_connected()


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


def test_only_the_api_may_publish_replays(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """The replay topic is how the API marks a message as a dead letter published again (the
    bridge then neither acknowledges it to the gateway nor counts it in the gaps): a gateway
    publishing there, for itself or another, gets PUBACK 135 and the bridge receives nothing;
    the API's publish arrives."""
    topics = broker.topics
    bridge_rec, gw_rec, api_rec = Recorder(), Recorder(), Recorder()
    bridge = bridge_rec.attach(mqtt_client(pki_mod.BRIDGE_IDENTITY))
    assert bridge_rec.subscribe(bridge, f"{topics.root}/replay/+/readings") == [1]
    gw_a = gw_rec.attach(mqtt_client("gw-a"))
    api = api_rec.attach(mqtt_client(pki_mod.API_IDENTITY))
    forged, own = _token(), _token()
    assert gw_rec.publish(gw_a, topics.replay("gw-a"), forged) == NOT_AUTHORIZED
    assert gw_rec.publish(gw_a, topics.replay("gw-b"), forged) == NOT_AUTHORIZED
    assert api_rec.publish(api, topics.replay("gw-a"), own) < 0x80
    assert bridge_rec.wait_for_payload(own).topic == topics.replay("gw-a")
    assert forged not in bridge_rec.payloads()


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
