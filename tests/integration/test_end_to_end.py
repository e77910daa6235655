"""End to end on real servers and the real console scripts, each its own process:

    edge-agent (jsonl source, SQLite outbox) --MQTT 5/TLS, client cert--> Mosquitto
    --$share subscription--> telemetry-bridge --/write--> InfluxDB 1.x <-- telemetry-api

Nothing here is faked: the test only writes a JSON-lines file and reads the REST API, the
dead-letter topic and the edge outbox.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from edge_agent.settings import EdgeSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.processes import BIN, Procs, mqtt_env, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_reading_travels_from_edge_to_rest_api(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """Readings fed to the edge agent come back from GET latest with the same values and ts;
    the newest ts wins even when it was captured first; a reading stamped a day ahead is
    dead-lettered with its reason; the outbox is empty once the broker acknowledged."""
    gateway = f"gw-e2e-{uuid.uuid4().hex[:6]}"
    charger = f"{gateway}-cp001"
    now = datetime.now(UTC).replace(microsecond=123000)
    newest = {"energy_wh": 12345.6, "power_w": 7200.0, "voltage_v": 229.5, "soc_pct": 64.0}
    lines = [
        # The newest reading comes first: "latest" must mean newest ts, not last arrival.
        {"charger_id": charger, "ts": format_ts(now), "status": "Charging", "values": newest},
        {
            "charger_id": charger,
            "ts": format_ts(now - timedelta(seconds=10)),
            "status": "Preparing",
            "values": {"energy_wh": 12000.0, "power_kw": 1.5},
        },
        {
            "charger_id": charger,
            "ts": format_ts(now + timedelta(days=1)),
            "status": "Charging",
            "values": {"energy_wh": 99999.0},
        },
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")

    dead: list[dict[str, object]] = []
    watcher = mqtt_client(None)
    watcher.on_message = lambda _c, _u, msg: dead.append(orjson.loads(msg.payload))
    watcher.subscribe(broker.topics.deadletter(gateway), qos=1)

    start_bridge(procs, broker, influx_db)
    read_key = secrets.token_urlsafe(24)
    api = start_api(procs, influx_db, read_key)

    outbox = tmp_path / "outbox.sqlite3"
    edge_env = mqtt_env(EdgeSettings, broker, gateway) | env_for(
        EdgeSettings, gateway_id=gateway, outbox_path=outbox
    )
    edge = procs.start(
        "edge", [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(feed)], edge_env
    )
    wait_until("the edge agent to send everything and exit", lambda: not edge.is_running())
    assert edge.returncode() == 0, edge.log_tail()

    headers = {"X-API-Key": read_key}
    got: dict[str, object] = {}

    def latest_is_there() -> bool:
        r = httpx.get(f"{api}/v1/chargers/{charger}/latest", headers=headers, timeout=5)
        if r.status_code == 200:
            got.update(r.json())
            return True
        assert r.status_code == 404, r.text
        return False

    wait_until("the reading to reach the API", latest_is_there)
    reading = got.get("reading", got)
    assert isinstance(reading, dict)
    assert reading["values"] == newest
    assert datetime.fromisoformat(str(reading["ts"])) == now
    assert reading["status"] == "Charging"
    assert reading["gateway_id"] == gateway
    assert reading["seq"] == 1

    wait_until("the dead letter", lambda: len(dead) >= 1, timeout=15)
    assert [d["reason"] for d in dead] == ["ts_in_future"]
    assert dead[0]["indexes"] == [2]  # one record per message, with the offending indexes

    history = httpx.get(
        f"{api}/v1/chargers/{charger}/history",
        params={
            "start": format_ts(now - timedelta(minutes=1)),
            "end": format_ts(now + timedelta(hours=1)),
        },
        headers=headers,
        timeout=5,
    )
    assert history.status_code == 200, history.text
    assert "7200" in history.text
    assert "1500" in history.text

    stats = procs.start(
        "stats",
        [str(BIN / "edge-agent"), "outbox", "stats", "--json", "--path", str(outbox)],
        {},
    )
    wait_until("outbox stats", lambda: not stats.is_running(), timeout=15)
    st = orjson.loads(stats.log_file.read_bytes())
    assert st["pending"] == 0
    assert st["last_seq_assigned"] == 3
