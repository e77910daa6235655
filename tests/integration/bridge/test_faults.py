"""Faults around the bridge, on real servers and the ``telemetry-bridge`` process (docs/design.md
guarantees 1-4): InfluxDB stopped mid-stream, the bridge SIGKILLed while it holds unacknowledged
messages, InfluxDB refusing some lines of a batch, late and replayed readings, two bridges
sharing the load with one of them killed.

A gateway is a paho MQTT 5 client over TLS with its own certificate; every publish waits for a
successful PUBACK. What is stored is read back with InfluxQL: points are keyed by time + tags, so
``count(seq)`` (points) and ``count(distinct(seq))`` (readings) together show loss and duplicates.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.schema import SCHEMA_ID, format_ts
from telemetry_common.settings import env_for
from telemetry_stack.servers import ManagedProcess, ServerBinaryMissing, free_port, start_influxd
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 30.0
#: Fast retries so that recovery is seen within a test's time budget.
FAST_RETRY = env_for(BridgeSettings, max_backoff_s=0.5, influx={"timeout_s": 3})
#: Every live value goes out at once (no conflation), so a wrong one cannot hide behind a newer.
NO_CONFLATION = env_for(BridgeSettings, live_interval_s=0)
UNACKED = "telemetry_bridge_unacked_messages"
RETRY_LOG = "InfluxDB write failed, retrying"


# --- helpers --------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def base_time() -> datetime:
    """A past instant, whole milliseconds, so that ``base + n ms`` keys are exact and unique."""
    now = datetime.now(UTC) - timedelta(hours=1)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def reading(
    charger: str, seq: int, ts: datetime, values: dict[str, float] | None = None
) -> dict[str, Any]:
    return {
        "charger_id": charger,
        "evse_id": 1,
        "connector_id": 1,
        "seq": seq,
        "ts": format_ts(ts),
        "status": "Charging",
        "values": values if values is not None else {"energy_wh": 1000.0 + seq, "power_w": 7.2},
    }


def batch(gateway: str, readings: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway, "readings": readings})


def seq_batch(gateway: str, first_seq: int, n: int, base: datetime) -> bytes:
    """``n`` readings of charger cp001 with seq ``first_seq..``, one millisecond apart."""
    charger = f"{gateway}-cp001"
    return batch(
        gateway,
        [
            reading(charger, s, base + timedelta(milliseconds=s))
            for s in range(first_seq, first_seq + n)
        ],
    )


@dataclass
class Feed:
    """JSON messages received by an anonymous loopback client (live and dead-letter feeds)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for t, body in self.messages if t == topic]

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))


def watch(mqtt_client: MqttClientFactory, *topics: str) -> Feed:
    """Subscribe an anonymous loopback client to ``topics``; returns once SUBACK arrived."""
    feed = Feed()
    client = mqtt_client(None)
    subscribed = threading.Event()
    client.on_message = feed._on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.subscribe([(t, 1) for t in topics])
    assert subscribed.wait(10), "no SUBACK"
    return feed


def stored(db: InfluxTarget, gateway: str, where: str = "") -> tuple[int, int]:
    """(points, distinct seq values) stored for ``gateway``."""
    cond = f"gateway_id = '{gateway}'" + (f" AND {where}" if where else "")
    points = influxql(db.url, db.database, f"SELECT count(seq) FROM readings WHERE {cond}")
    distinct = influxql(
        db.url, db.database, f"SELECT count(distinct(seq)) FROM readings WHERE {cond}"
    )
    return (int(points[0][1]) if points else 0, int(distinct[0][1]) if distinct else 0)


def wait_stored(db: InfluxTarget, gateway: str, n: int, timeout: float = WAIT_S) -> None:
    wait_until(f"{n} points of {gateway}", lambda: stored(db, gateway)[0] >= n, timeout)


def log_count(proc: ManagedProcess, text: str) -> int:
    return proc.log_file.read_text().count(text) if proc.log_file.exists() else 0


def metrics(http_port: int) -> dict[str, float]:
    """The bridge's metrics, from its /status document."""
    r = httpx.get(f"http://127.0.0.1:{http_port}/status", timeout=5)
    r.raise_for_status()
    return dict(r.json()["metrics"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def sigkill(proc: ManagedProcess) -> None:
    """SIGKILL ``proc`` by its PID and reap it."""
    assert proc.pid is not None
    assert proc.is_running()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.stop(timeout=10) == -signal.SIGKILL


@dataclass
class OwnInflux:
    """An InfluxDB 1.x of one test, stopped and restarted on the same port and data dir."""

    state: Path
    port: int
    proc: ManagedProcess | None = None

    @property
    def target(self) -> InfluxTarget:
        return InfluxTarget(url=f"http://127.0.0.1:{self.port}", database="telemetry")

    def start(self) -> None:
        self.proc = start_influxd(self.state, self.port)

    def stop(self) -> None:
        """SIGTERM by PID (``ManagedProcess.stop``), waiting until it exited."""
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[OwnInflux]:
    inst = OwnInflux(tmp_path / "influxd", free_port())
    try:
        inst.start()
    except ServerBinaryMissing as exc:
        pytest.skip(str(exc))
    yield inst
    inst.stop()


# --- tests ----------------------------------------------------------------------------------


def test_influxdb_outage_holds_messages_at_the_broker_and_stores_each_once(
    broker: BrokerInfo, own_influx: OwnInflux, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """InfluxDB stopped mid-stream: the bridge keeps at most its in-flight window (RSS stays
    flat while ~12 MB more are published: the broker holds the rest, unacknowledged), nothing is
    dead-lettered, and once InfluxDB is back on the same port and data dir every reading is
    stored exactly once (points == distinct seq == readings published)."""
    gw = unique("gw-outage")
    db = own_influx.target
    dead = watch(mqtt_client, broker.topics.deadletter(gw))
    http_port = free_port()
    window = 20
    bridge = start_bridge(
        procs,
        broker,
        db,
        extra_env=FAST_RETRY
        | env_for(BridgeSettings, max_inflight=window, batch_max_messages=10, http_port=http_port),
    )
    assert bridge.pid is not None
    gateway = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)
    base = base_time()
    per_batch = 1000  # ~170 KB of JSON per message
    seq = 1

    for _ in range(3):
        gateway.publish(seq_batch(gw, seq, per_batch, base))
        seq += per_batch
    wait_stored(db, gw, seq - 1)

    own_influx.stop()
    # Fill the bridge's window (20 messages) and then some.
    for _ in range(25):
        gateway.publish(seq_batch(gw, seq, per_batch, base))
        seq += per_batch
    wait_until("the bridge to retry its write", lambda: log_count(bridge, RETRY_LOG) > 0)
    time.sleep(1.0)
    rss_before = rss_kib(bridge.pid)
    for _ in range(70):
        gateway.publish(seq_batch(gw, seq, per_batch, base))
        seq += per_batch
    time.sleep(1.0)
    rss_after = rss_kib(bridge.pid)
    assert bridge.is_running(), bridge.log_tail()
    # It holds exactly its window, unacknowledged; the broker keeps the other 75 messages.
    assert metrics(http_port)[UNACKED] == window
    # Holding the 70 extra messages would cost > 12 MB of payload alone.
    assert rss_after - rss_before < 5 * 1024, (rss_before, rss_after)

    own_influx.start()
    total = seq - 1
    wait_stored(db, gw, total, timeout=90)
    assert stored(db, gw) == (total, total)
    assert dead.on(broker.topics.deadletter(gw)) == []
    wait_until("every message acknowledged", lambda: metrics(http_port)[UNACKED] == 0)


def test_bridge_killed_holding_unacked_messages_gets_them_again(
    broker: BrokerInfo, own_influx: OwnInflux, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """A bridge SIGKILLed after receiving messages and before writing them (InfluxDB is down)
    never acknowledged them: restarted with the same client id and share group it resumes its
    persistent session, gets them again and stores each reading once."""
    gw = unique("gw-kill")
    db = own_influx.target
    client_id, group = unique("bridge-kill"), unique("gkill")
    http_port = free_port()
    bridge = start_bridge(
        procs,
        broker,
        db,
        client_id=client_id,
        share_group=group,
        extra_env=FAST_RETRY | env_for(BridgeSettings, http_port=http_port),
    )
    gateway = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)
    base = base_time()
    per_batch, batches = 100, 30

    gateway.publish(seq_batch(gw, 1, per_batch, base))
    wait_stored(db, gw, per_batch)
    own_influx.stop()
    for i in range(1, batches):
        gateway.publish(seq_batch(gw, 1 + i * per_batch, per_batch, base))
    wait_until(
        "the bridge to hold a batch it cannot write", lambda: log_count(bridge, RETRY_LOG) > 0
    )
    wait_until(
        "the bridge to hold every message, unacknowledged",
        lambda: metrics(http_port)[UNACKED] == batches - 1,
    )
    sigkill(bridge)

    own_influx.start()
    offset = len(bridge.log_file.read_text())
    start_bridge(procs, broker, db, client_id=client_id, share_group=group, extra_env=FAST_RETRY)
    total = per_batch * batches
    wait_stored(db, gw, total)
    assert stored(db, gw) == (total, total)
    assert "session present: True" in bridge.log_file.read_text()[offset:]


def test_type_conflict_dead_letters_only_the_offending_lines(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """A batch where InfluxDB refuses some lines (``power_w`` already a string field in that
    shard): the other readings are stored, the refused readings are dead-lettered with reason
    ``influx_rejected``, one record for the message with their JSON and indexes, the live value
    is the newest *stored* reading (never a refused one), and the next batch flows."""
    gw = unique("gw-conflict")
    charger = f"{gw}-cp001"
    base = base_time()
    conflict = (
        f"readings,charger_id={charger},connector_id=1,evse_id=1,gateway_id={gw} "
        f'power_w="text" {int(base.timestamp()) * 10**9}'
    )
    r = httpx.post(
        f"{influx_db.url}/write",
        params={"db": influx_db.database, "precision": "ns"},
        content=conflict.encode(),
        timeout=10,
    )
    assert r.status_code == 204, r.text
    dead_topic, live_topic = broker.topics.deadletter(gw), broker.topics.live(charger)
    feed = watch(mqtt_client, dead_topic, live_topic)
    start_bridge(procs, broker, influx_db, extra_env=NO_CONFLATION)
    gateway = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)

    def at(s: int) -> datetime:
        return base + timedelta(seconds=s)

    readings = [
        reading(charger, s, at(s), {"energy_wh": 10.0 * s, "power_w": 7000.0})
        if s in {3, 6}
        else reading(charger, s, at(s), {"energy_wh": 10.0 * s})
        for s in range(1, 7)
    ]
    gateway.publish(batch(gw, readings))
    wait_until("the dead letter", lambda: len(feed.on(dead_topic)) >= 1)
    wait_until("a live value", lambda: len(feed.on(live_topic)) >= 1)
    time.sleep(0.3)  # room for a second, wrong, live value (or dead letter) to show up
    [dead] = feed.on(dead_topic)
    assert dead["reason"] == "influx_rejected"
    assert dead["indexes"] == [2, 5]
    assert all("field type conflict" in f["detail"] for f in dead["faults"])
    assert (dead["topic"], dead["gateway_id"]) == (gateway.topic, gw)
    refused = [r["seq"] for r in orjson.loads(base64.b64decode(dead["payload_b64"]))]
    assert refused == [3, 6]
    assert stored(influx_db, gw) == (4, 4)
    kept = influxql(
        influx_db.url,
        influx_db.database,
        f"SELECT seq FROM readings WHERE gateway_id = '{gw}' AND seq > 0",
    )
    assert sorted(int(row[1]) for row in kept) == [1, 2, 4, 5]
    assert [m["seq"] for m in feed.on(live_topic)] == [5]

    gateway.publish(batch(gw, [reading(charger, 7, at(7), {"energy_wh": 70.0})]))
    wait_stored(influx_db, gw, 5)
    wait_until("the next live value", lambda: len(feed.on(live_topic)) >= 2)
    assert [m["seq"] for m in feed.on(live_topic)] == [5, 7]
    assert len(feed.on(dead_topic)) == 1


def test_late_reading_never_replaces_the_live_value_and_replays_store_once(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """ts=10 then ts=5 for one charger: both are stored, the retained live value stays the
    ts=10 reading; three identical copies of one message store a single point."""
    gw = unique("gw-order")
    charger, marker = f"{gw}-cp001", f"{gw}-cp002"
    base = base_time()
    start_bridge(procs, broker, influx_db, extra_env=NO_CONFLATION)
    gateway = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)

    gateway.publish(batch(gw, [reading(charger, 1, base + timedelta(seconds=10))]))
    gateway.publish(batch(gw, [reading(charger, 2, base + timedelta(seconds=5))]))
    dup = batch(gw, [reading(charger, 3, base + timedelta(seconds=1))])
    for _ in range(3):
        gateway.publish(dup)
    # Messages of one gateway are processed in order: once the marker's live value is out,
    # every message before it has been processed, live updates included.
    gateway.publish(batch(gw, [reading(marker, 4, base)]))
    live_marker = watch(mqtt_client, broker.topics.live(marker))
    wait_until("the marker's live value", lambda: bool(live_marker.messages))

    assert stored(influx_db, gw, f"charger_id = '{charger}'") == (3, 3)
    at = influxql(
        influx_db.url,
        influx_db.database,
        f"SELECT seq FROM readings WHERE charger_id = '{charger}' AND seq = 3",
    )
    assert len(at) == 1
    live = watch(mqtt_client, broker.topics.live(charger))
    wait_until("the retained live value", lambda: bool(live.messages))
    time.sleep(0.3)
    values = live.on(broker.topics.live(charger))
    assert len(values) == 1
    assert values[0]["seq"] == 1
    assert values[0]["ts"] == format_ts(base + timedelta(seconds=10))


def test_two_bridges_share_the_load_and_survive_one_being_killed(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """Two bridges in one share group; one is SIGKILLed mid-stream and restarted with its
    client id: every reading is stored, none twice (points == distinct seq == published)."""
    gw = unique("gw-pair")
    group = unique("gpair")
    ids = unique("bridge-a"), unique("bridge-b")
    ports = free_port(), free_port()
    envs = [env_for(BridgeSettings, http_port=port) for port in ports]
    first = start_bridge(
        procs, broker, influx_db, name="a", client_id=ids[0], share_group=group, extra_env=envs[0]
    )
    start_bridge(
        procs, broker, influx_db, name="b", client_id=ids[1], share_group=group, extra_env=envs[1]
    )
    gateway = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)
    base = base_time()
    per_batch, batches = 50, 120

    offset = 0
    for i in range(batches):
        if i == 40:
            sigkill(first)
            offset = len(first.log_file.read_text())
        if i == 80:
            start_bridge(
                procs,
                broker,
                influx_db,
                name="a",
                client_id=ids[0],
                share_group=group,
                extra_env=envs[0],
            )
        gateway.publish(seq_batch(gw, 1 + i * per_batch, per_batch, base))
        time.sleep(0.005)
    total = per_batch * batches
    wait_stored(influx_db, gw, total)
    time.sleep(0.5)
    assert stored(influx_db, gw) == (total, total)
    # The restarted bridge resumed the session that kept what was queued for it meanwhile.
    assert "session present: True" in first.log_file.read_text()[offset:]
    # Both bridges took a share of the stream (the restarted one since its restart).
    assert all(metrics(port)["telemetry_bridge_messages_total"] > 0 for port in ports)
