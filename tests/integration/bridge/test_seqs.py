"""Seq numbering on real servers (Mosquitto, InfluxDB, the ``telemetry-bridge`` process, the
``edge-agent`` console script): a gateway whose outbox was created again (new epoch, seq from 1)
still has its losses reported, across a bridge restart; an absurd seq is dead-lettered and does
not blind gap tracking; two readings of one connector with the same ts are both stored."""

from __future__ import annotations

import base64
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from telemetry_common.schema import SCHEMA_ID, format_ts
from telemetry_common.settings import env_for, env_name
from telemetry_stack.servers import ManagedProcess
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.influx import influxql
from tests.support.processes import BIN, Procs, client_settings, start_bridge, stopped
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_GAPS = env_for(BridgeSettings, gap_grace_s=0.5)
E1, E2 = "00000000000000e1", "00000000000000e2"


def batch(
    gateway: str, charger: str, seqs: list[int], base: datetime, epoch: str | None = None
) -> bytes:
    """Readings ``seqs`` of ``charger``, seq s stamped ``base + s`` seconds (a seq beyond a
    million: ``base`` + 1 minute)."""
    readings = [
        {
            "charger_id": charger,
            "seq": s,
            "ts": format_ts(base + timedelta(seconds=s if s < 10**6 else 60)),
            "values": {"power_w": 1.0},
        }
        for s in seqs
    ]
    body: dict[str, Any] = {"schema": SCHEMA_ID, "gateway_id": gateway, "readings": readings}
    if epoch is not None:
        body["epoch"] = epoch
    return orjson.dumps(body)


def publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()


def gaps(bridge: ManagedProcess, gateway: str) -> list[dict[str, Any]]:
    assert bridge.env is not None
    port = bridge.env[env_name(BridgeSettings, "http_port")]
    doc = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
    return list(doc["seq_gaps"].get(gateway, []))


def count(db: InfluxTarget, gateway: str) -> int:
    rows = influxql(
        db.url, db.database, f"SELECT count(seq) FROM readings WHERE gateway_id = '{gateway}'"
    )
    return int(rows[0][1]) if rows else 0


def test_a_recreated_outbox_has_its_losses_reported_across_a_bridge_restart(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """A gateway sends seq 1..10 under epoch E1, then its outbox is created again: epoch E2,
    seq 1..3. The bridge restarts (its warm-up must take E2, not E1's 10, as the gateway's
    numbering), then E2's 4..5 are lost and 6..7 arrive: 4..5 of E2 are reported confirmed
    missing, although E1's 4..5 lie in the same time window."""
    tag = uuid.uuid4().hex[:6]
    gw, charger = f"gw-{tag}", f"cp-{tag}"
    client = mqtt_client(gw)
    topic = broker.topics.readings(gw)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    bridge = start_bridge(procs, broker, influx_db, extra_env=FAST_GAPS)
    publish(client, topic, batch(gw, charger, list(range(1, 11)), base, E1))
    publish(client, topic, batch(gw, charger, [1, 2, 3], base + timedelta(seconds=20), E2))
    wait_until("13 readings stored", lambda: count(influx_db, gw) == 13)
    assert gaps(bridge, gw) == []
    assert bridge.stop(timeout=20) == 0

    again = start_bridge(procs, broker, influx_db, name="bridge-2", extra_env=FAST_GAPS)
    publish(client, topic, batch(gw, charger, [6, 7], base + timedelta(seconds=20), E2))
    wait_until("15 readings stored", lambda: count(influx_db, gw) == 15)
    wait_until(
        "E2's gap confirmed",
        lambda: [g["state"] for g in gaps(again, gw)] == ["confirmed"],
        timeout=20,
    )
    assert gaps(again, gw) == [
        {"first_seq": 4, "last_seq": 5, "missing": 2, "state": "confirmed", "epoch": E2}
    ]


def test_an_absurd_seq_is_dead_lettered_and_later_gaps_are_still_reported(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """seq 2^63-1 between seq 2 and 3 is dead-lettered (``seq_out_of_range``) and not stored;
    the gateway's 5..6 lost afterwards are reported as missing."""
    tag = uuid.uuid4().hex[:6]
    gw, charger = f"gw-{tag}", f"cp-{tag}"
    dead: list[dict[str, Any]] = []
    arrived = threading.Event()
    watcher = mqtt_client(None)

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        dead.append(orjson.loads(m.payload))
        arrived.set()

    watcher.on_message = on_message
    watcher.subscribe(broker.topics.deadletter(gw), qos=1)
    client = mqtt_client(gw)
    topic = broker.topics.readings(gw)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    bridge = start_bridge(procs, broker, influx_db, extra_env=FAST_GAPS)
    publish(client, topic, batch(gw, charger, [1, 2], base))
    publish(client, topic, batch(gw, charger, [2**63 - 1], base))
    publish(client, topic, batch(gw, charger, [3, 4, 7], base))
    wait_until("5 readings stored", lambda: count(influx_db, gw) == 5)
    assert arrived.wait(15)
    assert [(d["reason"], d["indexes"]) for d in dead] == [("seq_out_of_range", [0])]
    [sent] = orjson.loads(base64.b64decode(dead[0]["payload_b64"]))
    assert sent["seq"] == 2**63 - 1
    wait_until(
        "the gap confirmed",
        lambda: [g["state"] for g in gaps(bridge, gw)] == ["confirmed"],
        timeout=20,
    )
    assert [(g["first_seq"], g["last_seq"], g["missing"]) for g in gaps(bridge, gw)] == [(5, 6, 2)]
    rows = influxql(
        influx_db.url,
        influx_db.database,
        f"SELECT max(seq) FROM readings WHERE gateway_id = '{gw}'",
    )
    assert int(rows[0][1]) == 7


def test_two_readings_of_one_connector_with_one_ts_are_both_stored(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """Through the real edge agent: two readings of one connector with the same ts (as OCPP's
    StopTransaction and its MeterValues), and after a restart of the agent a third one, are
    stored as three points with seqs 1, 2, 3 (ts T, T+1 ms, T+2 ms): no seq vanishes."""
    tag = uuid.uuid4().hex[:6]
    gw, charger = f"gw-{tag}", f"cp-{tag}"
    start_bridge(procs, broker, influx_db)
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def line(energy: float) -> bytes:
        reading = {"charger_id": charger, "ts": format_ts(t), "values": {"energy_wh": energy}}
        return orjson.dumps(reading) + b"\n"

    outbox = tmp_path / "outbox.sqlite3"
    env = env_for(
        EdgeSettings,
        **client_settings(broker, gw),
        gateway_id=gw,
        outbox_path=outbox,
        reconnect_max_s=2,
    )
    argv = [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file"]
    for name, lines in (("first", line(1.0) + line(2.0)), ("second", line(3.0))):
        feed = tmp_path / f"{name}.jsonl"
        feed.write_bytes(lines)
        edge = procs.start(f"edge-{name}", [*argv, str(feed)], env)
        wait_until(f"the {name} agent to send and exit", stopped(edge), 60)
        assert edge.returncode() == 0, edge.log_tail()
    wait_until("3 readings stored", lambda: count(influx_db, gw) == 3)
    q = f"SELECT seq, energy_wh FROM readings WHERE gateway_id = '{gw}'"
    answer = httpx.get(
        f"{influx_db.url}/query",
        params={"db": influx_db.database, "q": q, "epoch": "ms"},
        timeout=10,
    ).json()
    rows = answer["results"][0]["series"][0]["values"]
    base = int(t.timestamp() * 1000)
    assert [(r[0] - base, r[1], r[2]) for r in rows] == [(0, 1, 1.0), (1, 2, 2.0), (2, 3, 3.0)]
