"""Enrollment and renewal end to end, each part its own real process: ``edge-agent enroll``
against a ``telemetry-api`` holding the test broker's CA, then ``edge-agent run`` publishing
over TLS with the enrolled certificate to the real Mosquitto, a bridge storing in InfluxDB.

Renewal: the API issues certificates living 40 s and the agent renews 30 s before expiry, so it
renews about every 10 s while readings flow. The session reconnects with each new certificate;
after the first certificate's notAfter has passed, a reconnect presenting it would be refused
by the broker, so readings still arriving then prove the new certificate is in use."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edge_agent.outbox import Outbox
from edge_agent.settings import EdgeSettings
from provisioning import enrollment
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port
from tests.integration.edge_agent.test_agent import metrics
from tests.integration.edge_agent.test_heartbeat import StateWatcher
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.influx import influxql
from tests.support.outbox_readings import pending_seqs
from tests.support.processes import BIN, Procs, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LIFETIME_S = 40.0
RENEW_BEFORE_S = 30.0


def _env(broker: BrokerInfo, gateway: str, tmp: Path, **extra: object) -> dict[str, str]:
    """An agent for ``gateway`` whose certificate and key are to be enrolled under ``tmp``."""
    mqtt = {
        "host": broker.host,
        "port": broker.tls_port,
        "ca_file": broker.ca_file,
        "cert_file": tmp / "gw.crt",
        "key_file": tmp / "gw.key",
    }
    return env_for(
        EdgeSettings,
        gateway_id=gateway,
        outbox_path=tmp / "outbox.sqlite3",
        mqtt=mqtt,
        topic_root=broker.topic_root,
        log_format="json",
        reconnect_max_s=2,
        publish_timeout_s=10,
        **extra,
    )


def _enroll(
    api: str, token: str, env: dict[str, str], *, via_env: bool = False
) -> subprocess.CompletedProcess[str]:
    """``edge-agent enroll``, the token on the command line or in TELEMETRY_EDGE_ENROLL_TOKEN."""
    argv = [str(BIN / "edge-agent"), "enroll", "--url", api]
    if via_env:
        env = env | {"TELEMETRY_EDGE_ENROLL_TOKEN": token}
    else:
        argv += ["--token", token]
    return subprocess.run(
        argv, env=env | _inherited(), capture_output=True, text=True, timeout=60, check=False
    )


def _inherited() -> dict[str, str]:
    """This process's environment without any TELEMETRY_ variable (the agent's are given)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}


def _stored_seqs(db: InfluxTarget, gateway: str) -> set[int]:
    rows = influxql(db.url, db.database, f"SELECT seq FROM readings WHERE gateway_id = '{gateway}'")
    return {int(r[1]) for r in rows}


def test_enrolled_agent_publishes_over_tls(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """``edge-agent enroll`` makes the key (0600) and gets a certificate for the gateway id; the
    same token again is refused with a clear message; the agent then publishes with the
    enrolled certificate and its readings reach InfluxDB."""
    gateway = f"gw-enr-{uuid.uuid4().hex[:6]}"
    api = start_api(
        procs,
        influx_db,
        secrets.token_urlsafe(24),
        extra_env={"TELEMETRY_API_PKI_DIR": str(broker.pki.dir)},
    )
    token = enrollment.Tokens(broker.pki.dir).create(gateway)
    env = _env(broker, gateway, tmp_path)
    done = _enroll(api, token, env)
    assert done.returncode == 0, done.stderr
    assert f"enrolled {gateway}" in done.stdout
    key_file, cert_file = tmp_path / "gw.key", tmp_path / "gw.crt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway
    assert not (broker.pki.dir / f"{gateway}.key").exists()  # the key stayed on the gateway

    again = _enroll(api, token, _env(broker, gateway, tmp_path / "again"), via_env=True)
    assert again.returncode == 1
    assert "already used" in again.stderr
    assert not (tmp_path / "again" / "gw.key").exists()

    start_bridge(procs, broker, influx_db)
    edge = procs.start(
        "edge",
        [str(BIN / "edge-agent"), "run", "--source", "sim"],
        env | {"TELEMETRY_EDGE_SIM__INTERVAL_S": "0.2"},
    )
    wait_until("readings stored", lambda: len(_stored_seqs(influx_db, gateway)) >= 10, 60)
    assert edge.is_running()


def test_agent_renews_before_expiry_without_losing_a_reading(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """Certificates live 40 s; the agent renews 30 s before expiry while readings flow. Each
    renewal is a new serial, reported in the state topic and the metric; readings keep being
    stored after the first certificate expired; every seq the agent made is stored or still
    is stored, the few the stop left in the outbox once drained."""
    gateway = f"gw-ren-{uuid.uuid4().hex[:6]}"
    api = start_api(
        procs,
        influx_db,
        secrets.token_urlsafe(24),
        extra_env={
            "TELEMETRY_API_PKI_DIR": str(broker.pki.dir),
            "TELEMETRY_API_ENROLLMENT_CERT_DAYS": str(LIFETIME_S / 86400),
        },
    )
    port = free_port()
    env = _env(
        broker,
        gateway,
        tmp_path,
        enrollment_url=api,
        renew_before_days=RENEW_BEFORE_S / 86400,
        renew_check_s=1,
        metrics_port=port,
        state_interval_s=1,
        sim={"chargers": 2, "interval_s": 0.1},
    )
    token = enrollment.Tokens(broker.pki.dir).create(gateway)
    done = _enroll(api, token, env)
    assert done.returncode == 0, done.stderr
    cert_file = tmp_path / "gw.crt"
    first = x509.load_pem_x509_certificate(cert_file.read_bytes())
    watcher = StateWatcher(mqtt_client("telemetry-bridge"), broker.topics.state(gateway))
    start_bridge(procs, broker, influx_db)
    edge = procs.start("edge", [str(BIN / "edge-agent"), "run", "--source", "sim"], env)

    def expiry() -> float:
        try:
            return metrics(port).get("telemetry_edge_certificate_expiry_timestamp_seconds", 0.0)
        except httpx.HTTPError:  # not serving yet
            return 0.0

    wait_until("the agent's metrics", lambda: expiry() > 0, 30)
    assert expiry() == first.not_valid_after_utc.timestamp()
    wait_until(
        "three renewals",
        lambda: metrics(port).get("telemetry_edge_certificate_renewals_total", 0) >= 3,
        60,
    )
    # Past the first certificate's notAfter, the broker would refuse it at a reconnect.
    wait_until(
        "the first certificate to expire",
        lambda: datetime.now(UTC) > first.not_valid_after_utc,
        LIFETIME_S + 5,
    )
    renewals = metrics(port)["telemetry_edge_certificate_renewals_total"]
    wait_until(
        "a renewal after the first certificate expired",
        lambda: metrics(port)["telemetry_edge_certificate_renewals_total"] > renewals,
        30,
    )
    newest_before = max(_stored_seqs(influx_db, gateway))
    wait_until(
        "readings stored after that reconnect",
        lambda: max(_stored_seqs(influx_db, gateway)) > newest_before + 20,
        30,
    )
    current = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert current.serial_number != first.serial_number
    assert current.not_valid_after_utc > first.not_valid_after_utc
    seen = metrics(port)
    assert seen["telemetry_edge_mqtt_connected"] == 1
    assert seen["telemetry_edge_certificate_renewal_failures_total"] == 0
    assert seen["telemetry_edge_certificate_expiry_timestamp_seconds"] > (
        first.not_valid_after_utc.timestamp()
    )
    reported = {d.get("cert_not_after") for d in watcher.docs() if d["state"] == "online"}
    assert first.not_valid_after_utc.isoformat() in reported
    assert len(reported) >= 3  # each renewal's certificate announced at its reconnect
    latest = [d["cert_not_after"] for d in watcher.docs() if d["state"] == "online"][-1]
    assert datetime.fromisoformat(latest) > first.not_valid_after_utc

    edge.stop(timeout=10)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        pending = set(pending_seqs(box))
    # What the stop left in the outbox goes out with the (renewed, still valid) certificate.
    drain = subprocess.run(
        [str(BIN / "edge-agent"), "outbox", "drain", "--timeout", "30"],
        env=env | _inherited(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert drain.returncode == 0, drain.stderr
    made = max(_stored_seqs(influx_db, gateway) | pending)
    wait_until(
        "every reading stored",
        lambda: _stored_seqs(influx_db, gateway) >= set(range(1, made + 1)),
        30,
    )
    stored = _stored_seqs(influx_db, gateway)
    assert stored == set(range(1, made + 1))
    print(f"stored {len(stored)} (drained {len(pending)}), renewals > {int(renewals)}")
    assert httpx.get(f"{api}/healthz").status_code == 200
