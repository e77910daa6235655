"""Bridge behaviour on real servers: charger bindings that survive a restart (warmed from
InfluxDB), Prometheus metrics, readiness, and a clean exit on SIGTERM."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for, env_name
from telemetry_stack.servers import ManagedProcess
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _batch(gateway: str, charger: str, seq: int, ts: datetime) -> bytes:
    reading = {"charger_id": charger, "seq": seq, "ts": format_ts(ts), "values": {"power_w": 1.0}}
    return orjson.dumps(
        {"schema": "charger-telemetry/1", "gateway_id": gateway, "readings": [reading]}
    )


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()


def _stored_seqs(db: InfluxTarget, charger: str) -> list[int]:
    q = f"SELECT seq FROM readings WHERE charger_id = '{charger}'"
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=5)
    series = r.json()["results"][0].get("series", [])
    return [int(row[1]) for row in series[0]["values"]] if series else []


def _http(bridge: ManagedProcess, path: str) -> httpx.Response:
    assert bridge.env is not None
    port = bridge.env[env_name(BridgeSettings, "http_port")]
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_charger_bound_to_one_gateway_stays_bound_across_restart(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """gw-a's charger is refused to gw-b with `charger_not_bound` (dead-lettered, not stored),
    also by a freshly started bridge that learnt the binding from InfluxDB; /metrics counts it,
    /readyz is 200, and SIGTERM ends the bridge with exit code 0."""
    tag = uuid.uuid4().hex[:6]
    gw_a, gw_b, charger = f"gw-a-{tag}", f"gw-b-{tag}", f"cp-{tag}"
    dead: list[dict[str, object]] = []
    watcher = mqtt_client(None)
    watcher.on_message = lambda _c, _u, m: dead.append(orjson.loads(m.payload))
    watcher.subscribe(broker.topics.deadletter(gw_b), qos=1)
    a, b = mqtt_client(gw_a), mqtt_client(gw_b)
    now = datetime.now(UTC)

    bridge = start_bridge(procs, broker, influx_db)
    _publish(a, broker.topics.readings(gw_a), _batch(gw_a, charger, 1, now))
    wait_until("gw-a's reading stored", lambda: _stored_seqs(influx_db, charger) == [1])
    _publish(b, broker.topics.readings(gw_b), _batch(gw_b, charger, 1, now + timedelta(seconds=1)))
    wait_until("the refusal", lambda: len(dead) == 1, timeout=15)
    assert dead[0]["reason"] == "charger_not_bound"
    assert gw_a in str(dead[0]["detail"])

    assert _http(bridge, "/readyz").status_code == 200
    metrics = _http(bridge, "/metrics").text
    assert 'telemetry_bridge_deadletters_total{reason="charger_not_bound"} 1.0' in metrics
    assert "telemetry_bridge_readings_stored_total 1.0" in metrics
    assert bridge.stop(timeout=20) == 0

    again = start_bridge(procs, broker, influx_db, name="bridge-2")
    _publish(b, broker.topics.readings(gw_b), _batch(gw_b, charger, 2, now + timedelta(seconds=2)))
    wait_until("the second refusal", lambda: len(dead) == 2, timeout=15)
    assert dead[1]["reason"] == "charger_not_bound"
    assert _stored_seqs(influx_db, charger) == [1]
    status = orjson.loads(_http(again, "/status").content)
    assert status["ready"] is True
    assert status["bindings"] >= 1


def test_seq_gap_is_reported_until_the_missing_readings_arrive(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """seq 1, 2, 5 from one gateway: after the grace period /status and /metrics report 3..4 as
    missing; seq 3 written to InfluxDB by someone else (another bridge) and seq 4 replayed by the
    gateway close the gap."""
    tag = uuid.uuid4().hex[:6]
    gw, charger = f"gw-{tag}", f"cp-{tag}"
    client = mqtt_client(gw)
    bridge = start_bridge(
        procs, broker, influx_db, extra_env=env_for(BridgeSettings, gap_grace_s=0.5)
    )
    now = datetime.now(UTC)
    for seq in (1, 2, 5):
        _publish(
            client,
            broker.topics.readings(gw),
            _batch(gw, charger, seq, now + timedelta(seconds=seq)),
        )
    wait_until("the readings stored", lambda: len(_stored_seqs(influx_db, charger)) == 3)

    def gaps() -> list[dict[str, object]]:
        doc = orjson.loads(_http(bridge, "/status").content)
        return list(doc["seq_gaps"].get(gw, []))

    wait_until("a confirmed gap", lambda: [g["state"] for g in gaps()] == ["confirmed"], 15)
    assert gaps()[0] == {
        "first_seq": 3,
        "last_seq": 4,
        "missing": 2,
        "state": "confirmed",
        "epoch": None,
    }
    assert "telemetry_bridge_seq_missing 2.0" in _http(bridge, "/metrics").text

    ns = int((now + timedelta(seconds=3)).timestamp()) * 10**9
    line = f"readings,charger_id={charger},connector_id=0,evse_id=0,gateway_id={gw} seq=3i {ns}"
    httpx.post(f"{influx_db.url}/write", params={"db": influx_db.database}, content=line)
    _publish(client, broker.topics.readings(gw), _batch(gw, charger, 4, now + timedelta(seconds=4)))
    wait_until("the gap to close", lambda: gaps() == [], 15)
    assert "telemetry_bridge_seq_missing 0.0" in _http(bridge, "/metrics").text


def _query(db: InfluxTarget, q: str) -> list[dict[str, object]]:
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=5)
    series = r.json()["results"][0].get("series", [])
    return [dict(zip(s["columns"], row, strict=True)) for s in series for row in s["values"]]


def test_transaction_fields_and_charger_identity_are_stored(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """A transaction's start and end readings keep transaction_id, tx_event, stop_reason and
    id_tag_hash as string fields (no new series per transaction), and a boot reading's
    charger_info lands in keep.chargers, texts with quotes and backslashes intact."""
    tag = uuid.uuid4().hex[:6]
    gw, charger = f"gw-{tag}", f"cp-{tag}"
    now = datetime.now(UTC).replace(microsecond=0)
    h = "0123456789abcdef0123456789abcdef"
    readings = [
        {"charger_id": charger, "seq": 1, "ts": format_ts(now - timedelta(seconds=3)),
         "charger_info": {"vendor": 'ACME "Power"', "model": "W\\22", "serial": "SN-1",
                          "firmware": "1.2.3"}, "values": {}},
        {"charger_id": charger, "evse_id": 1, "connector_id": 1, "seq": 2,
         "ts": format_ts(now - timedelta(seconds=2)), "transaction_id": "tx-9",
         "tx_event": "started", "id_tag_hash": h, "values": {"energy_wh": 1000.0}},
        {"charger_id": charger, "evse_id": 1, "connector_id": 1, "seq": 3,
         "ts": format_ts(now - timedelta(seconds=1)), "transaction_id": "tx-9",
         "values": {"energy_wh": 1500.0, "power_w": 7000.0}},
        {"charger_id": charger, "evse_id": 1, "connector_id": 1, "seq": 4, "ts": format_ts(now),
         "transaction_id": "tx-9", "tx_event": "ended", "stop_reason": "EVDisconnected",
         "id_tag_hash": h, "values": {"energy_wh": 2500.0}},
    ]  # fmt: skip
    payload = orjson.dumps({"gateway_id": gw, "readings": readings})
    start_bridge(procs, broker, influx_db)
    _publish(mqtt_client(gw), broker.topics.readings(gw), payload)
    wait_until("stored", lambda: _stored_seqs(influx_db, charger) == [1, 2, 3, 4])

    rows = _query(
        influx_db,
        "SELECT seq, transaction_id, tx_event, stop_reason, id_tag_hash, energy_wh "
        f"FROM readings WHERE charger_id = '{charger}'",
    )
    assert [(r["seq"], r["transaction_id"], r["tx_event"], r["stop_reason"]) for r in rows] == [
        (1, None, None, None),
        (2, "tx-9", "started", None),
        (3, "tx-9", None, None),
        (4, "tx-9", "ended", "EVDisconnected"),
    ]
    assert [r["id_tag_hash"] for r in rows] == [None, h, None, h]
    tags = _query(influx_db, f"SHOW TAG KEYS FROM readings WHERE charger_id = '{charger}'")
    assert {t["tagKey"] for t in tags} == {"charger_id", "gateway_id", "evse_id", "connector_id"}

    info = _query(influx_db, f"""SELECT * FROM "keep"."chargers" WHERE charger_id = '{charger}'""")
    assert len(info) == 1
    assert {k: info[0][k] for k in ("gateway_id", "vendor", "model", "serial", "firmware")} == {
        "gateway_id": gw, "vendor": 'ACME "Power"', "model": "W\\22", "serial": "SN-1",
        "firmware": "1.2.3",
    }  # fmt: skip
    assert info[0]["time"] == format_ts(now - timedelta(seconds=3)).replace(".000Z", "Z")
