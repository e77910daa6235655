"""``/v1/gateways`` on the real pipeline: a real ``edge-agent`` process (simulated chargers,
heartbeat every 0.5 s, a certificate that expires in 3 days, an outbox that already dropped
readings) announces its state retained on Mosquitto; the real ``telemetry-bridge`` stores its
readings in InfluxDB; ``telemetry-api`` serves the fleet view from the retained state (its one
broker session) and the stored chargers. SIGSTOP makes it ``stale``, SIGCONT ``online`` again,
SIGKILL (the broker's last will) ``offline``. A gateway only stored readings name is ``unknown``.
"""

from __future__ import annotations

import os
import secrets
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from edge_agent.budget import Budget
from edge_agent.capture import Capture
from edge_agent.heartbeat import agent_version
from edge_agent.outbox import Outbox
from query_api.settings import ApiSettings
from telemetry_common.schema import Reading, encode_batch, format_ts
from telemetry_common.settings import env_for
from tests.integration.edge_agent.test_agent import edge_env
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.forged_certs import sign_with_ca
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.processes import BIN, Procs, start_api, start_bridge, stopped
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ = secrets.token_urlsafe(18)
INTERVAL_S = 0.5


def _get(api: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{api}{path}", params=params, headers={"X-API-Key": READ}, timeout=10)


def _gateway(api: str, gateway: str) -> dict[str, Any] | None:
    r = _get(api, f"/v1/gateways/{gateway}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _wait(
    api: str, gateway: str, what: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The gateway's document once ``check`` holds (bounded)."""
    seen: list[dict[str, Any]] = []

    def ok() -> bool:
        doc = _gateway(api, gateway)
        if doc is None:
            return False
        seen[:] = [doc]
        return check(doc)

    try:
        wait_until(f"{gateway} {what}", ok, timeout=40)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last document: {seen}") from exc
    return seen[0]


def _outbox_with_drops(path: Path) -> None:
    """An outbox of 2 rows given 5 readings: it drops the 3 oldest (counted ``budget_energy``,
    kept in the file); the 2 left are deleted, so the agent starts with an empty outbox that
    remembers 3 drops."""
    ts = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    bodies = [Capture("CP-1", ts, {"energy_wh": float(n)}).to_body() for n in range(5)]
    with Outbox(path, Budget(max_rows=2)) as box:
        box.delete(box.append(bodies)[-2:])
        assert box.stats().dropped == {"budget_energy": 3}
        assert box.stats().pending == 0


def test_a_real_agent_online_stale_offline_and_a_stored_only_gateway(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """The agent's heartbeat reaches /v1/gateways/{id}: online, its version, interval, outbox
    (empty) with the 3 drops its outbox counted, its certificate's notAfter (3 days: warning),
    its clock, its 2 simulated chargers (stored by the bridge). Frozen with SIGSTOP (no
    heartbeat, no last will: the TCP session stays): stale; SIGCONT: online, same since.
    SIGKILL: the broker's last will makes it offline, with the last known version and outbox
    kept and a new since; ``?state=offline`` lists it. A gateway that only published readings
    (no state) is listed ``unknown`` with its charger."""
    start_bridge(procs, broker, influx_db, extra_env=env_for(BridgeSettings, live_interval_s=0.2))
    api = start_api(
        procs, influx_db, READ, broker=broker,
        extra_env=env_for(ApiSettings, live_settle_s=0.5, chargers_cache_s=0.5, alarms=False),
    )  # fmt: skip
    gateway = f"gw-fleet-{uuid.uuid4().hex[:6]}"
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    cert, key = sign_with_ca(
        broker.pki.dir, tmp_path / "certs", gateway, not_after - timedelta(days=30), not_after
    )
    outbox = tmp_path / "outbox.sqlite3"
    _outbox_with_drops(outbox)
    env = edge_env(
        broker, gateway, outbox, state_interval_s=INTERVAL_S,
        sim={"chargers": 2, "interval_s": 0.5},
    )  # fmt: skip
    env["TELEMETRY_EDGE_MQTT__CERT_FILE"] = str(cert)
    env["TELEMETRY_EDGE_MQTT__KEY_FILE"] = str(key)
    edge = procs.start("edge", [str(BIN / "edge-agent"), "run", "--source", "sim"], env)
    assert edge.pid is not None

    doc = _wait(api, gateway, "online with its 2 chargers", lambda d: (
        d["state"] == "online" and d["chargers"]["count"] == 2
    ))  # fmt: skip
    assert doc["agent_version"] == agent_version()
    assert doc["heartbeat_interval_s"] == INTERVAL_S
    assert doc["outbox"]["drops"] == {"budget_energy": 3}
    assert doc["outbox"]["oldest_unsent_ts"] is None or doc["outbox"]["depth"] > 0
    assert doc["cert_not_after"] == format_ts(not_after)
    assert 2.9 < doc["cert_days_left"] <= 3.0
    assert doc["cert_status"] == "warning"
    assert doc["clock"] is not None
    assert all(c.startswith(f"{gateway}-") for c in doc["chargers"]["ids"])
    assert doc["chargers"]["href"] == f"v1/chargers?gateway={gateway}"
    since = doc["since"]
    assert since is not None
    listed = _get(api, "/v1/gateways", state="online", limit=1000).json()["items"]
    assert gateway in [g["gateway_id"] for g in listed]

    # Frozen: the heartbeat stops, the broker keeps the session (keepalive 60 s): stale.
    os.kill(edge.pid, signal.SIGSTOP)
    try:
        frozen = _wait(api, gateway, "stale", lambda d: d["state"] == "stale")
        assert frozen["age_s"] > 3 * INTERVAL_S
    finally:
        os.kill(edge.pid, signal.SIGCONT)
    again = _wait(api, gateway, "online again", lambda d: d["state"] == "online")
    assert again["since"] == since  # the same session: online all along as far as it said

    os.kill(edge.pid, signal.SIGKILL)
    wait_until("the agent to die", stopped(edge), timeout=10)
    gone = _wait(api, gateway, "offline (last will)", lambda d: d["state"] == "offline")
    assert gone["agent_version"] == agent_version()
    assert gone["outbox"]["drops"] == {"budget_energy": 3}
    assert gone["since"] > since
    assert gone["chargers"]["count"] == 2
    offline = _get(api, "/v1/gateways", state="offline", limit=1000).json()["items"]
    assert gateway in [g["gateway_id"] for g in offline]

    # A gateway that never announced a state: known from its stored reading only.
    quiet = f"gw-quiet-{uuid.uuid4().hex[:6]}"
    reading = Reading.model_validate_json(orjson.dumps({
        "charger_id": f"{quiet}-cp1", "seq": 1, "ts": format_ts(datetime.now(UTC)),
        "values": {"power_w": 1.0},
    }))  # fmt: skip
    GatewayPublisher(mqtt_client(quiet), broker.topics.readings(quiet)).publish(
        encode_batch(quiet, [reading])
    )
    doc = _wait(api, quiet, "unknown", lambda d: d["state"] == "unknown")
    assert doc["chargers"]["ids"] == [f"{quiet}-cp1"]
    assert (doc["agent_version"], doc["outbox"], doc["last_seen"]) == (None, None, None)
