"""The gateway's state topic against a real Mosquitto (issue 18): the retained birth and heartbeat
carry the outbox depth, the oldest unsent reading, the unconfirmed count and the certificate's
notAfter; the last will (``offline``) replaces them when the agent is killed.

The agent is the real ``edge-agent`` console script with a certificate valid 3 more days; no
bridge runs, so what it publishes stays unconfirmed in its outbox.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from edge_agent.clock import os_unsynchronised
from edge_agent.outbox import Outbox
from telemetry_common.stored_ack import encode as ack_payload
from telemetry_stack.servers import free_port
from tests.integration.edge_agent.test_agent import edge_env, jsonl, line, metrics, unique
from tests.support.edge_agent_io import open_fifo_writer
from tests.support.fixtures import BrokerInfo, MqttClientFactory
from tests.support.forged_certs import sign_with_ca
from tests.support.processes import BIN, Procs, stopped
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class StateWatcher:
    """Every message on one state topic, in order, with its retain flag."""

    def __init__(self, client: mqtt.Client, topic: str) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[dict[str, Any], bool]] = []
        client.on_message = self._on_message
        client.subscribe(topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            with self._lock:
                self.seen.append((orjson.loads(msg.payload), bool(msg.retain)))

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [doc for doc, _ in self.seen]

    def last(self) -> dict[str, Any] | None:
        docs = self.docs()
        return docs[-1] if docs else None


def test_heartbeat_carries_outbox_and_certificate_then_last_will_on_kill(
    broker: BrokerInfo, procs: Procs, tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    """25 readings go into the agent's outbox and are published; no bridge confirms them. The
    state topic then carries, retained and republished every 0.5 s: depth 25, unconfirmed 25,
    the oldest reading's capture time, the agent version and the certificate's exact notAfter
    (also the metric). A subscriber arriving later gets the retained heartbeat. SIGKILL: the
    broker publishes the last will, exactly ``{"state": "offline", "ts"}``."""
    gateway = unique("gw-hb")
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    cert, key = sign_with_ca(
        broker.pki.dir, tmp_path / "certs", gateway, not_after - timedelta(days=30), not_after
    )
    topic = broker.topics.state(gateway)
    # Someone takes the readings (a PUBACK with success) but never acknowledges them as stored.
    consumer = mqtt_client("telemetry-bridge")
    consumer.subscribe(broker.topics.readings(gateway), qos=1)
    watcher = StateWatcher(mqtt_client("telemetry-bridge"), topic)
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    port = free_port()
    env = edge_env(
        broker,
        gateway,
        tmp_path / "outbox.sqlite3",
        metrics_port=port,
        state_interval_s=0.5,
        stored_timeout_s=600,
    )
    env["TELEMETRY_EDGE_MQTT__CERT_FILE"] = str(cert)
    env["TELEMETRY_EDGE_MQTT__KEY_FILE"] = str(key)
    argv = [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(fifo)]
    edge = procs.start("edge", argv, env)
    fd = open_fifo_writer(fifo)
    try:
        wait_until("the birth", lambda: any(d["state"] == "online" for d in watcher.docs()))
        birth = watcher.docs()[0]
        assert birth["cert_not_after"] == not_after.isoformat()
        assert birth["outbox"]["depth"] == 0
        base = datetime.now(UTC) - timedelta(minutes=5)
        before = time.time()
        os.write(fd, jsonl([line(gateway, i, base) for i in range(25)]))
        after = time.time()

        def settled() -> bool:
            doc = watcher.last()
            return doc is not None and doc.get("outbox", {}).get("unconfirmed") == 25

        wait_until("a heartbeat with 25 unconfirmed readings", settled, timeout=20)
        beat = watcher.last()
        assert beat is not None
        assert beat["state"] == "online"
        assert beat["outbox"]["depth"] == 25
        oldest = datetime.fromisoformat(beat["outbox"]["oldest_unsent_ts"]).timestamp()
        assert before - 1 <= oldest <= after + 1
        assert beat["cert_not_after"] == not_after.isoformat()
        assert beat["agent_version"]
        # Republished while connected: later heartbeats, each with a newer ts.
        count = len(watcher.docs())
        wait_until("two more heartbeats", lambda: len(watcher.docs()) >= count + 2, timeout=10)
        stamps = [datetime.fromisoformat(d["ts"]) for d in watcher.docs()[count - 1 :]]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == len(stamps)
        seen = metrics(port)
        assert seen["telemetry_edge_certificate_expiry_timestamp_seconds"] == not_after.timestamp()
        # A subscriber arriving now gets the heartbeat retained.
        late = StateWatcher(mqtt_client("telemetry-bridge"), topic)
        wait_until("the retained heartbeat", lambda: bool(late.seen), timeout=10)
        retained, flag = late.seen[0]
        assert flag is True
        assert retained["state"] == "online"
        assert retained["outbox"]["depth"] == 25

        assert edge.pid is not None
        os.kill(edge.pid, signal.SIGKILL)
        wait_until("the agent to die", stopped(edge), timeout=10)

        def offline() -> bool:
            doc = watcher.last()
            return doc is not None and doc["state"] == "offline"

        wait_until("the last will", offline, timeout=30)
        will = watcher.last()
        assert will is not None
        assert set(will) == {"state", "ts"}
    finally:
        os.close(fd)


def test_birth_carries_the_full_state_and_a_clean_stop_says_offline(
    broker: BrokerInfo, procs: Procs, tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    """With a heartbeat only every hour, the one ``online`` message is the birth the MQTT client
    builds at connect: it already carries the outbox (3 readings left from an earlier run) and
    the certificate's notAfter. SIGTERM: the agent itself publishes ``offline`` (state and ts
    only) before it disconnects."""
    gateway = unique("gw-birth")
    outbox = tmp_path / "outbox.sqlite3"
    with Outbox(outbox) as box:
        box.append([orjson.dumps(line(gateway, i, datetime.now(UTC))) for i in range(3)])
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=40)
    cert, key = sign_with_ca(
        broker.pki.dir, tmp_path / "certs", gateway, not_after - timedelta(days=50), not_after
    )
    watcher = StateWatcher(mqtt_client("telemetry-bridge"), broker.topics.state(gateway))
    env = edge_env(broker, gateway, outbox, state_interval_s=3600, stored_timeout_s=600)
    env["TELEMETRY_EDGE_MQTT__CERT_FILE"] = str(cert)
    env["TELEMETRY_EDGE_MQTT__KEY_FILE"] = str(key)
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    argv = [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(fifo)]
    edge = procs.start("edge", argv, env)
    fd = open_fifo_writer(fifo)
    try:
        wait_until("the birth", lambda: bool(watcher.docs()), timeout=20)
        (birth,) = watcher.docs()
        assert birth["state"] == "online"
        assert birth["outbox"]["depth"] == 3
        assert birth["outbox"]["oldest_unsent_ts"] is not None
        assert birth["cert_not_after"] == not_after.isoformat()
        assert edge.pid is not None
        os.kill(edge.pid, signal.SIGTERM)
        wait_until("the offline state", lambda: len(watcher.docs()) >= 2, timeout=10)
        offline = watcher.docs()[-1]
        assert offline["state"] == "offline"
        assert set(offline) == {"state", "ts"}
    finally:
        os.close(fd)  # the jsonl reader's thread sees the end of its input: the agent exits
    wait_until("the agent to exit", stopped(edge), timeout=15)
    assert edge.returncode() == 0, edge.log_tail()


def test_a_clock_off_the_bridges_and_old_readings_are_reported(
    broker: BrokerInfo, procs: Procs, tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    """A stored acknowledgement stamped by a bridge whose clock reads 400 s later than the
    gateway's (the gateway's clock is behind): the heartbeat's ``clock`` says ``cloud``
    unsynchronised with an offset of about -400 s, as does the gauge
    ``clock_unsynchronised{source="cloud"}``; the ``os`` source says what the kernel says. An
    acknowledgement from an accurate bridge afterwards does not clear it while the -400 s one
    is in the window (the smallest offset counts: transit only ever adds to it). A reading
    stamped 40 days back is counted in ``readings_too_old`` and logged, and still sent."""
    gateway = unique("gw-clock")
    topic = broker.topics.state(gateway)
    consumer = mqtt_client("telemetry-bridge")
    got: list[bytes] = []
    consumer.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    consumer.subscribe(broker.topics.readings(gateway), qos=1)
    watcher = StateWatcher(mqtt_client("telemetry-bridge"), topic)
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    port = free_port()
    env = edge_env(
        broker,
        gateway,
        tmp_path / "outbox.sqlite3",
        metrics_port=port,
        state_interval_s=0.5,
        stored_timeout_s=600,
    )
    argv = [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(fifo)]
    edge = procs.start("edge", argv, env)
    fd = open_fifo_writer(fifo)
    try:
        wait_until("the birth", lambda: any(d["state"] == "online" for d in watcher.docs()))
        birth = watcher.docs()[0]
        kernel = os_unsynchronised()
        assert birth["clock"] == {
            "unsynchronised": {"os": kernel, "cloud": None},
            "offset_s": None,
        }
        # A reading 40 days old: counted and logged, and sent all the same.
        old = line(gateway, 1, datetime.now(UTC) - timedelta(days=40))
        os.write(fd, jsonl([old, line(gateway, 2, datetime.now(UTC))]))
        wait_until("both readings sent", lambda: len(got) >= 1 and b'"seq":2' in got[-1])
        seen = metrics(port)
        assert seen["telemetry_edge_readings_too_old_total"] == 1
        assert "readings captured stamped more than 30 days" in edge.log_file.read_text()

        bridge = mqtt_client("telemetry-bridge")
        ahead = datetime.now(UTC) + timedelta(seconds=400)
        bridge.publish(broker.topics.stored(gateway), ack_payload(None, [999], ts=ahead), qos=1)

        def clock() -> dict[str, Any]:
            doc = watcher.last()
            return doc.get("clock", {}) if doc is not None else {}

        wait_until(
            "a heartbeat saying the clock is off",
            lambda: clock().get("unsynchronised", {}).get("cloud") is True,
            timeout=20,
        )
        assert -401 < clock()["offset_s"] < -399
        assert clock()["unsynchronised"]["os"] == kernel
        seen = metrics(port)
        assert seen['telemetry_edge_clock_unsynchronised{source="cloud"}'] == 1.0
        assert -401 < seen["telemetry_edge_clock_offset_seconds"] < -399
        if kernel is not None:
            assert seen['telemetry_edge_clock_unsynchronised{source="os"}'] == float(kernel)
        # An accurate bridge: the smallest offset of the window is -400 s still (behind).
        bridge.publish(broker.topics.stored(gateway), ack_payload(None, [998]), qos=1)
        time.sleep(1.5)
        assert clock()["unsynchronised"]["cloud"] is True
        assert edge.pid is not None
        os.kill(edge.pid, signal.SIGTERM)  # no bridge confirms: it would wait for good
    finally:
        os.close(fd)  # the jsonl reader's thread sees the end of its input
    wait_until("the agent to exit", stopped(edge), timeout=15)
