"""Alarms on the real pipeline: a gateway identity publishes readings and its retained state
through Mosquitto, the real ``telemetry-bridge`` stores them (and its confirmed seq gaps and dead
letters) in InfluxDB, and ``telemetry-api`` (alarms on, short thresholds) raises and clears each
kind: seen retained on ``{root}/alarms/{kind}/{subject}`` by an anonymous subscriber (the
message, then the empty one) and on ``GET /v1/alarms``; once only across a restart of the API.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from query_api.alarms.store import Alarm
from query_api.settings import ApiSettings
from telemetry_common.schema import Reading, encode_batch, format_ts
from telemetry_common.settings import env_for
from telemetry_stack.servers import ManagedProcess
from tests.integration.edge_agent.test_agent import edge_env
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.forged_certs import sign_with_ca
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.mqtt_recorder import Recorder
from tests.support.processes import BIN, Procs, logged, start_api, start_bridge, stopped
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ = secrets.token_urlsafe(18)
BRIDGE_ENV = env_for(BridgeSettings, live_interval_s=0.2, gap_grace_s=1)
API_ENV = env_for(
    ApiSettings,
    live_settle_s=0.5,
    alarm_interval_s=0.5,
    alarm_settle_s=1.0,
    alarm_silent_min_s=4.0,
    alarm_backlog_s=3.0,
    alarm_cert_days=14.0,
    alarm_deadletters_window_s=5.0,
)


@dataclass
class Alarms:
    """The pipeline, a gateway identity and a subscriber to every alarm topic."""

    broker: BrokerInfo
    db: InfluxTarget
    procs: Procs
    mqtt_client: MqttClientFactory
    api: str
    gateway: str
    client: mqtt.Client
    publisher: GatewayPublisher
    seen: Recorder
    seq: int = 0
    sent_at: float = 0.0
    last_ts: datetime = field(default_factory=lambda: datetime.now(UTC))

    # -- the gateway -------------------------------------------------------------------------
    def read(self, charger: str, status: str | None = "Charging", seq: int | None = None) -> None:
        """One reading of ``charger`` (EVSE 1, connector 1) stamped now, next seq unless given."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        ts = max(datetime.now(UTC), self.last_ts + timedelta(milliseconds=1))
        self.last_ts = ts
        doc: dict[str, Any] = {
            "charger_id": charger, "evse_id": 1, "connector_id": 1, "seq": seq,
            "ts": format_ts(ts), "values": {"power_w": 7000.0},
        }  # fmt: skip
        if status is not None:
            doc["status"] = status
        reading = Reading.model_validate_json(orjson.dumps(doc))
        self.publisher.publish(encode_batch(self.gateway, [reading]))
        self.sent_at = time.monotonic()

    def keep_reading(self, charger: str, status: str) -> None:
        """A reading every 0.3 s at most (call it from a wait's check)."""
        if time.monotonic() - self.sent_at >= 0.3:
            self.read(charger, status)

    def state(self, doc: dict[str, Any], client: mqtt.Client | None = None) -> None:
        """The gateway's retained state, as the edge agent publishes it."""
        info = (client or self.client).publish(
            self.broker.topics.state(self.gateway if client is None else doc.pop("_gw")),
            orjson.dumps(doc), qos=1, retain=True,
        )  # fmt: skip
        info.wait_for_publish(10)

    # -- what is seen --------------------------------------------------------------------------
    def get(self, **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.api}/v1/alarms", params=params, headers={"X-API-Key": READ}, timeout=10
        )
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def messages(self, kind: str, subject: str) -> list[mqtt.MQTTMessage]:
        topic = self.broker.topics.alarm(kind, subject)
        with self.seen.changed:
            return [m for m in self.seen.messages if m.topic == topic]

    def wait_raised(self, kind: str, subject: str, tick: Any = None) -> dict[str, Any]:
        """The alarm active on the API and its retained message on the broker (same id)."""
        found: list[dict[str, Any]] = []

        def raised() -> bool:
            if tick is not None:
                tick()
            found[:] = self.get(state="active", kind=kind, subject=subject)
            msgs = self.messages(kind, subject)
            return bool(found and msgs and msgs[-1].payload)

        wait_until(f"{kind} {subject} raised", raised, timeout=40)
        (item,) = found
        msg = orjson.loads(self.messages(kind, subject)[-1].payload)
        assert msg == {k: item[k] for k in ("id", "kind", "subject", "since", "severity", "detail")}
        assert item["cleared_at"] is None
        return item

    def wait_cleared(self, kind: str, subject: str, alarm_id: str, tick: Any = None) -> None:
        """Gone from the active ones, cleared in the history, its topic emptied: once."""

        def cleared() -> bool:
            if tick is not None:
                tick()
            msgs = self.messages(kind, subject)
            return not self.get(state="active", kind=kind, subject=subject) and not (
                msgs[-1].payload if msgs else b"x"
            )

        wait_until(f"{kind} {subject} cleared", cleared, timeout=40)
        (item,) = self.get(state="all", kind=kind, subject=subject, start="-1h")
        assert item["id"] == alarm_id
        assert item["cleared_at"] is not None
        assert item["cleared_at"] >= item["since"]
        payloads = [bytes(m.payload) for m in self.messages(kind, subject)]
        assert payloads[-1] == b""
        assert payloads.count(b"") == 1
        assert len(payloads) == 2  # raised once, cleared once

    def stored_occurrences(self, kind: str, subject: str) -> list[list[Any]]:
        return influxql(
            self.db.url,
            self.db.database,
            f"SELECT id, active, cleared_at FROM \"keep\".alarms WHERE kind = '{kind}' "
            f"AND subject = '{subject}'",
        )


def _api(db: InfluxTarget, broker: BrokerInfo, procs: Procs, name: str) -> str:
    return start_api(procs, db, READ, broker=broker, name=name, extra_env=API_ENV)


@pytest.fixture
def alarms(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> Alarms:
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    start_bridge(procs, broker, influx_db, extra_env=BRIDGE_ENV)
    seen = Recorder()
    listener = seen.attach(mqtt_client(None))
    assert seen.subscribe(listener, broker.topics.all_alarms()) == [1]  # granted QoS 1
    api = _api(influx_db, broker, procs, "api")
    client = mqtt_client(gateway)
    publisher = GatewayPublisher(client, broker.topics.readings(gateway))
    return Alarms(broker, influx_db, procs, mqtt_client, api, gateway, client, publisher, seen)


def _heartbeat(oldest: datetime | None, cert: datetime | None) -> dict[str, Any]:
    return {
        "state": "online",
        "ts": format_ts(datetime.now(UTC)),
        "agent_version": "1.2.3",
        "outbox": {
            "depth": 0 if oldest is None else 42,
            "oldest_unsent_ts": None if oldest is None else format_ts(oldest),
            "unconfirmed": 0,
        },
        "cert_not_after": None if cert is None else format_ts(cert),
    }


def test_connector_faulted_and_charger_silent_raise_and_clear(alarms: Alarms) -> None:
    """A Faulted status raises connector_faulted, another status clears it; a charger that
    stops reporting (its gateway online) raises charger_silent, its next reading clears it."""
    a = alarms
    charger = f"{a.gateway}-cp1"
    a.state(_heartbeat(None, datetime.now(UTC) + timedelta(days=365)))
    subject = f"{charger}.1.1"
    faulted = a.wait_raised(
        "connector_faulted", subject, tick=lambda: a.keep_reading(charger, "Faulted")
    )
    assert faulted["severity"] == "warning"
    a.wait_cleared(
        "connector_faulted",
        subject,
        faulted["id"],
        tick=lambda: a.keep_reading(charger, "Charging"),
    )
    assert not a.messages("charger_silent", charger)  # it never stopped reporting
    silent = a.wait_raised("charger_silent", charger)  # no more readings
    assert "no reading since" in silent["detail"]
    a.read(charger, "Charging")
    a.wait_cleared("charger_silent", charger, silent["id"])


def test_a_faulted_connector_beside_a_busy_one_of_the_same_charger_raises(
    alarms: Alarms,
) -> None:
    """Two connectors of one charger report in the same batches: connector 2 Faulted, connector
    1 Charging a millisecond later. The live feed carries only the charger's newest reading
    (connector 1), so connector 2's status comes from InfluxDB: its alarm is raised, and cleared
    once it reports Available."""
    a = alarms
    charger = f"{a.gateway}-cp2"
    a.state(_heartbeat(None, datetime.now(UTC) + timedelta(days=365)))

    def pair(status_2: str) -> None:
        if time.monotonic() - a.sent_at < 0.3:
            return
        readings = []
        for connector, status in ((2, status_2), (1, "Charging")):
            a.seq += 1
            ts = max(datetime.now(UTC), a.last_ts + timedelta(milliseconds=1))
            a.last_ts = ts
            readings.append(
                Reading.model_validate_json(
                    orjson.dumps(
                        {
                            "charger_id": charger,
                            "evse_id": 1,
                            "connector_id": connector,
                            "seq": a.seq,
                            "ts": format_ts(ts),
                            "status": status,
                            "values": {"power_w": 7000.0},
                        }
                    )
                )
            )
        a.publisher.publish(encode_batch(a.gateway, readings))
        a.sent_at = time.monotonic()

    subject = f"{charger}.1.2"
    faulted = a.wait_raised("connector_faulted", subject, tick=lambda: pair("Faulted"))
    assert not a.get(state="active", kind="connector_faulted", subject=f"{charger}.1.1")
    a.wait_cleared("connector_faulted", subject, faulted["id"], tick=lambda: pair("Available"))


def test_edge_backlog_certificate_expiry_and_gateway_offline(alarms: Alarms) -> None:
    """The state heartbeat's outbox and certificate raise edge_backlog and certificate_expiry
    (a fresh heartbeat clears them); a gateway killed without a goodbye (its last will) raises
    gateway_offline, its next birth clears it."""
    a = alarms
    now = datetime.now(UTC)
    a.state(_heartbeat(now - timedelta(hours=1), now + timedelta(days=2)))
    backlog = a.wait_raised("edge_backlog", a.gateway)
    cert = a.wait_raised("certificate_expiry", a.gateway)
    a.state(_heartbeat(None, now + timedelta(days=200)))
    a.wait_cleared("edge_backlog", a.gateway, backlog["id"])
    a.wait_cleared("certificate_expiry", a.gateway, cert["id"])

    other = f"gw-{uuid.uuid4().hex[:6]}"
    client = a.mqtt_client(other, connect=False)
    will = orjson.dumps({"state": "offline", "ts": format_ts(now)})
    client.will_set(a.broker.topics.state(other), will, qos=1, retain=True)
    client.connect(a.broker.host, a.broker.port_for(other), keepalive=30)
    client.loop_start()
    wait_until("the gateway connected", client.is_connected, timeout=10)
    a.state({"_gw": other, **_heartbeat(None, None)}, client)
    time.sleep(2)  # evaluated online: no alarm
    assert not a.messages("gateway_offline", other)
    client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()  # killed: no DISCONNECT, the broker sends the last will
    offline = a.wait_raised("gateway_offline", other)
    assert offline["severity"] == "critical"
    back = a.mqtt_client(other)
    a.state({"_gw": other, **_heartbeat(None, None)}, back)
    a.wait_cleared("gateway_offline", other, offline["id"])


def test_seq_gap_confirmed_and_deadletters_raise_and_clear(alarms: Alarms) -> None:
    """Seqs 1, 2, 5: the bridge confirms 3..4 missing and stores it (seqgaps), the API raises
    seq_gap_confirmed; 3 and 4 arriving late clear it. Bad input is dead-lettered: deadletters
    is raised, and cleared once the window holds none."""
    a = alarms
    charger = f"{a.gateway}-cp1"
    a.state(_heartbeat(None, None))
    for seq in (1, 2, 5):
        a.read(charger, seq=seq)
    gap = a.wait_raised("seq_gap_confirmed", a.gateway)
    assert "2 readings confirmed missing" in gap["detail"]
    rows = influxql(
        a.db.url, a.db.database, f"SELECT missing FROM seqgaps WHERE gateway_id = '{a.gateway}'"
    )
    assert rows[0][1] == 2
    for seq in (3, 4):
        a.read(charger, seq=seq)
    a.wait_cleared("seq_gap_confirmed", a.gateway, gap["id"])

    a.publisher.publish(b"not json")
    dead = a.wait_raised("deadletters", a.gateway)
    assert dead["detail"].startswith("1 dead letters")
    a.wait_cleared("deadletters", a.gateway, dead["id"])  # the 5 s window passes


def test_an_alarm_is_raised_once_across_a_restart_of_the_api(alarms: Alarms) -> None:
    """Raised, then the API is restarted: the new process loads it (same id), evaluates it
    still firing and neither raises nor publishes it again; the clear after the restart
    clears it once."""
    a = alarms
    will = {"state": "offline", "ts": format_ts(datetime.now(UTC))}
    a.state(will)
    first = a.wait_raised("gateway_offline", a.gateway)
    api_proc: ManagedProcess = a.procs.started[-1]
    api_proc.stop(timeout=10)
    a.api = _api(a.db, a.broker, a.procs, "api-2")
    again = a.procs.started[-1]
    wait_until("the active alarms loaded", logged(again, "active loaded from InfluxDB"))

    def rounds() -> float:
        text = httpx.get(f"{a.api}/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("telemetry_api_alarm_eval"))
        return float(line.split()[-1])

    wait_until("5 rounds of evaluation", lambda: rounds() >= 5)
    (item,) = a.get(state="active", kind="gateway_offline", subject=a.gateway)
    assert item == first
    assert len(a.stored_occurrences("gateway_offline", a.gateway)) == 1
    assert len(a.messages("gateway_offline", a.gateway)) == 1  # not published again
    assert f"alarm raised: gateway_offline {a.gateway}" not in again.log_file.read_text()
    metrics = httpx.get(f"{a.api}/metrics", timeout=5).text
    assert 'telemetry_api_alarms_active{kind="gateway_offline"}' in metrics

    a.state(_heartbeat(None, None))
    a.wait_cleared("gateway_offline", a.gateway, first["id"])
    ((_, ident, active, cleared_at),) = a.stored_occurrences("gateway_offline", a.gateway)
    assert ident == first["id"]
    assert active is False
    assert cleared_at is not None


def test_charger_silent_stays_raised_across_a_restart_of_the_api(alarms: Alarms) -> None:
    """A charger silent before a restart of the API: the new process holds only its retained
    last value (its interval not learned, so the limit would be STATE_STALE_AFTER_S, 300 s):
    the alarm stays as it is (not cleared, not raised again) until the charger's next reading
    clears it once."""
    a = alarms
    charger = f"{a.gateway}-cp1"
    a.state(_heartbeat(None, None))
    for _ in range(4):
        a.read(charger, "Charging")
        time.sleep(0.3)
    silent = a.wait_raised("charger_silent", charger)
    api_proc: ManagedProcess = a.procs.started[-1]
    api_proc.stop(timeout=10)
    a.api = _api(a.db, a.broker, a.procs, "api-2")
    again = a.procs.started[-1]
    wait_until("the active alarms loaded", logged(again, "active loaded from InfluxDB"))

    def rounds() -> float:
        text = httpx.get(f"{a.api}/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("telemetry_api_alarm_eval"))
        return float(line.split()[-1])

    wait_until("5 rounds of evaluation", lambda: rounds() >= 5)
    (item,) = a.get(state="active", kind="charger_silent", subject=charger)
    assert item == silent
    assert len(a.messages("charger_silent", charger)) == 1  # neither cleared nor published again
    a.read(charger, "Charging")
    a.wait_cleared("charger_silent", charger, silent["id"])
    assert len(a.stored_occurrences("charger_silent", charger)) == 1


def test_alarms_older_than_the_default_retention_policy_clear(alarms: Alarms) -> None:
    """``autogen`` keeps 1 h (the rollup job cuts it): an alarm raised 3 h ago (adopted from its
    retained topic by a restarted API) and a fresh one clear in one round, both stored cleared
    in InfluxDB and emptied on MQTT: alarms are kept in the retention policy ``keep``."""
    a = alarms
    api_proc: ManagedProcess = a.procs.started[-1]
    api_proc.stop(timeout=10)
    r = httpx.post(
        f"{a.db.url}/query",
        data={"q": f'ALTER RETENTION POLICY "autogen" ON "{a.db.database}" DURATION 1h '
              "SHARD DURATION 1h"},
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert '"error"' not in r.text, r.text
    old_gw = f"gw-old-{uuid.uuid4().hex[:6]}"
    old_client = a.mqtt_client(old_gw)
    offline = {"state": "offline", "ts": format_ts(datetime.now(UTC))}
    a.state({"_gw": old_gw, **offline}, old_client)
    since = datetime.now(UTC) - timedelta(hours=3)
    old = Alarm.raised("gateway_offline", old_gw, since, "critical", "offline for long")
    service = a.mqtt_client("telemetry-api")
    topic = a.broker.topics.alarm("gateway_offline", old_gw)
    service.publish(topic, old.message(), qos=1, retain=True).wait_for_publish(10)
    a.state(dict(offline))
    a.api = _api(a.db, a.broker, a.procs, "api-2")

    fresh = a.wait_raised("gateway_offline", a.gateway)

    def adopted() -> bool:
        return [x["id"] for x in a.get(state="active", subject=old_gw)] == [old.id]

    wait_until("the old alarm adopted", adopted, timeout=40)
    (item,) = a.get(state="active", subject=old_gw)
    assert item["since"] == format_ts(old.since)
    a.state({"_gw": old_gw, **_heartbeat(None, None)}, old_client)
    a.state(_heartbeat(None, None))
    a.wait_cleared("gateway_offline", a.gateway, fresh["id"])

    def old_cleared() -> bool:
        msgs = a.messages("gateway_offline", old_gw)
        return not a.get(state="active", subject=old_gw) and bool(msgs) and not msgs[-1].payload

    wait_until("the old alarm cleared", old_cleared, timeout=40)
    (item,) = a.get(state="all", subject=old_gw, start="-4h")
    assert item["id"] == old.id
    assert item["cleared_at"] is not None
    payloads = [bytes(m.payload) for m in a.messages("gateway_offline", old_gw)]
    assert payloads == [old.message(), b""]  # adopted as it was, cleared once
    ((_, ident, active, cleared_at),) = a.stored_occurrences("gateway_offline", old_gw)
    assert (ident, active) == (old.id, False)
    assert cleared_at is not None


def test_a_real_edge_agent_short_lived_certificate_backlog_and_kill(
    alarms: Alarms, tmp_path: Path
) -> None:
    """The real ``edge-agent`` (simulated chargers, heartbeat every 0.5 s) with a certificate
    that expires in 3 days: certificate_expiry is raised from its heartbeat. The bridge stops:
    its readings stay unconfirmed in the outbox and edge_backlog is raised; a bridge again: the
    outbox drains and it clears. SIGKILL: the last will raises gateway_offline; the agent
    started again clears it (the certificate's alarm stays: still short-lived)."""
    a = alarms
    gateway = f"gw-edge-{uuid.uuid4().hex[:6]}"
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    cert, key = sign_with_ca(
        a.broker.pki.dir, tmp_path / "certs", gateway, not_after - timedelta(days=30), not_after
    )
    env = edge_env(
        a.broker,
        gateway,
        tmp_path / "outbox.sqlite3",
        state_interval_s=0.5,
        stored_timeout_s=2,
        sim={"chargers": 1, "interval_s": 0.5},
    )
    env["TELEMETRY_EDGE_MQTT__CERT_FILE"] = str(cert)
    env["TELEMETRY_EDGE_MQTT__KEY_FILE"] = str(key)
    argv = [str(BIN / "edge-agent"), "run", "--source", "sim"]
    edge = a.procs.start("edge", argv, env)
    expiry = a.wait_raised("certificate_expiry", gateway)
    assert format_ts(not_after) in expiry["detail"]
    time.sleep(4)  # longer than ALARM_BACKLOG_S: the bridge keeps the outbox drained
    assert not a.messages("edge_backlog", gateway)

    bridge = a.procs.started[0]
    assert bridge.name == "bridge"
    bridge.stop(timeout=10)
    backlog = a.wait_raised("edge_backlog", gateway)
    start_bridge(a.procs, a.broker, a.db, name="bridge-2", extra_env=BRIDGE_ENV)
    a.wait_cleared("edge_backlog", gateway, backlog["id"])

    assert edge.pid is not None
    os.kill(edge.pid, signal.SIGKILL)
    wait_until("the agent to die", stopped(edge), timeout=10)
    offline = a.wait_raised("gateway_offline", gateway)
    assert "offline" in offline["detail"]
    a.procs.start("edge-2", argv, env)
    a.wait_cleared("gateway_offline", gateway, offline["id"])
    (still,) = a.get(state="active", kind="certificate_expiry", subject=gateway)
    assert still["id"] == expiry["id"]
    assert len(a.messages("certificate_expiry", gateway)) == 1
