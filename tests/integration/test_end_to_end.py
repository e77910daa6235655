"""End to end on real servers and the real console scripts, each its own process:

    edge-agent (jsonl source, SQLite outbox) --MQTT 5/TLS, client cert--> Mosquitto
    --$share subscription--> telemetry-bridge --/write--> InfluxDB 1.x <-- telemetry-api

Nothing here is faked: the test only writes a JSON-lines file and reads the REST API, the
dead-letter topic and the edge outbox.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from telemetry_stack.servers import ManagedProcess, free_port
from telemetry_stack.testing import BrokerInfo, InfluxTarget, MqttClientFactory

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _ms(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _mqtt_env(prefix: str, broker: BrokerInfo, identity: str) -> dict[str, str]:
    cert, key = broker.pki.client(identity)
    return {
        f"{prefix}MQTT__HOST": broker.host,
        f"{prefix}MQTT__PORT": str(broker.tls_port),
        f"{prefix}MQTT__CA_FILE": str(broker.ca_file),
        f"{prefix}MQTT__CERT_FILE": str(cert),
        f"{prefix}MQTT__KEY_FILE": str(key),
        f"{prefix}TOPIC_ROOT": broker.topic_root,
        f"{prefix}LOG_FORMAT": "json",
    }


class Procs:
    """Processes started by one test, all stopped by PID at its end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        proc = ManagedProcess(
            name, argv, log_file=self.logs / f"{name}.log", env={**os.environ, **env}
        )
        proc.start()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "logs")
    yield p
    p.stop_all()


def start_bridge(procs: Procs, broker: BrokerInfo, db: InfluxTarget) -> ManagedProcess:
    env = _mqtt_env("TELEMETRY_BRIDGE_", broker, "telemetry-bridge") | {
        "TELEMETRY_BRIDGE_INFLUX__URL": db.url,
        "TELEMETRY_BRIDGE_INFLUX__DATABASE": db.database,
        # A session of its own per test: a leftover session must not steal this test's messages.
        "TELEMETRY_BRIDGE_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:8]}",
        "TELEMETRY_BRIDGE_SHARE_GROUP": f"g{uuid.uuid4().hex[:8]}",
    }
    bridge = procs.start("bridge", [str(BIN / "telemetry-bridge")], env)
    # Until the shared subscription exists the broker would drop the gateway's messages.
    bridge.wait_ready(lambda: "subscribed to" in bridge.log_file.read_text(), timeout=30)
    return bridge


def start_api(procs: Procs, db: InfluxTarget, read_key: str) -> str:
    port = free_port()
    env = {
        "TELEMETRY_API_HOST": "127.0.0.1",
        "TELEMETRY_API_PORT": str(port),
        "TELEMETRY_API_INFLUX__URL": db.url,
        "TELEMETRY_API_INFLUX__DATABASE": db.database,
        "TELEMETRY_API_KEYS": orjson.dumps({"read": read_key, "ingest": "i" * 32}).decode(),
        "TELEMETRY_API_LOG_FORMAT": "json",
    }
    api = procs.start("api", [str(BIN / "telemetry-api")], env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    api.wait_ready(healthy, timeout=30)
    return url


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
        {"charger_id": charger, "ts": _ms(now), "status": "Charging", "values": newest},
        {
            "charger_id": charger,
            "ts": _ms(now - timedelta(seconds=10)),
            "status": "Preparing",
            "values": {"energy_wh": 12000.0, "power_kw": 1.5},
        },
        {
            "charger_id": charger,
            "ts": _ms(now + timedelta(days=1)),
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
    edge_env = _mqtt_env("TELEMETRY_EDGE_", broker, gateway) | {
        "TELEMETRY_EDGE_GATEWAY_ID": gateway,
        "TELEMETRY_EDGE_OUTBOX_PATH": str(outbox),
    }
    edge = procs.start(
        "edge", [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(feed)], edge_env
    )
    _wait("the edge agent to send everything and exit", lambda: not edge.is_running())
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

    _wait("the reading to reach the API", latest_is_there)
    reading = got.get("reading", got)
    assert isinstance(reading, dict)
    assert reading["values"] == newest
    assert datetime.fromisoformat(str(reading["ts"])) == now
    assert reading["status"] == "Charging"
    assert reading["gateway_id"] == gateway
    assert reading["seq"] == 1

    _wait("the dead letter", lambda: len(dead) >= 1, timeout=15)
    assert [d["reason"] for d in dead] == ["ts_in_future"]
    assert dead[0]["index"] == 2

    history = httpx.get(
        f"{api}/v1/chargers/{charger}/history",
        params={"start": _ms(now - timedelta(minutes=1)), "end": _ms(now + timedelta(hours=1))},
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
    _wait("outbox stats", lambda: not stats.is_running(), timeout=15)
    st = orjson.loads(stats.log_file.read_bytes())
    assert st["pending"] == 0
    assert st["last_seq_assigned"] == 3
