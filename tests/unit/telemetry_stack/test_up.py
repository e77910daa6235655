"""telemetry_stack.stack: what `telemetry-stack up` tells each service is what the service's
settings model reads back (names derived from the models, never typed by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from provisioning.pki import Pki
from query_api.settings import ApiSettings
from rollups.settings import RollupsSettings
from sessions.settings import SessionsSettings
from telemetry_stack.stack import DATABASE, Ports, Startup, UpOptions

KEYS = {"read": "r" * 32, "ingest": "i" * 32, "admin": "a" * 32}


@pytest.fixture
def startup(tmp_path: Path) -> Startup:
    pki = Pki(tmp_path / "pki")
    return Startup(
        opts=UpOptions(state_dir=tmp_path, chargers=3, interval_s=0.5, topic_root="fleet/v9"),
        dir=tmp_path,
        pki=pki,
        gateways={"gw-1": pki.client_paths("gw-1")},
        ports=Ports(
            tls=18883,
            local=11883,
            influx=18086,
            api=18000,
            bridge=19464,
            service=18884,
            rollups=19465,
            sessions=19467,
        ),
        keys=KEYS,
        echo=print,
    )


def _read(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_the_bridge_reads_its_broker_storage_names_and_port(
    startup: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge connects as telemetry-bridge over TLS on the services listener, writes to the
    stack's database over the v1 API, and takes the deployment's client id, share group and ops
    port."""
    _read(monkeypatch, startup.bridge_env("telemetry-bridge-1-abc", "processors-abc"))
    s = BridgeSettings()
    assert (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 18884)
    assert s.mqtt.ca_file == startup.pki.ca_file
    assert s.mqtt.cert_file == startup.pki.dir / "telemetry-bridge.crt"
    assert (s.influx.url, s.influx.database, s.influx.api) == (
        "http://127.0.0.1:18086",
        DATABASE,
        "v1",
    )
    assert (s.client_id, s.share_group, s.http_port) == (
        "telemetry-bridge-1-abc",
        "processors-abc",
        19464,
    )
    assert s.topic_root == "fleet/v9"


def test_the_api_reads_its_keys_storage_feed_and_bridge(
    startup: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API listens on the stack's port with its three keys, reads the stack's database,
    connects as telemetry-api on the services listener, and knows the bridge's ops URL."""
    _read(monkeypatch, startup.api_env())
    s = ApiSettings()
    assert (s.host, s.port) == ("127.0.0.1", 18000)
    assert {role: key.get_secret_value() for role, key in s.keys.items()} == KEYS
    assert (s.influx.url, s.influx.database) == ("http://127.0.0.1:18086", DATABASE)
    assert s.mqtt is not None
    assert s.mqtt.cert_file == startup.pki.dir / "telemetry-api.crt"
    assert s.mqtt.port == 18884
    assert s.ingest_seq_file == startup.dir / "api" / "ingest-seq.json"
    assert [str(u).rstrip("/") for u in s.bridge_urls] == ["http://127.0.0.1:19464"]
    assert s.topic_root == "fleet/v9"
    assert s.pki_dir == startup.pki.dir  # POST /v1/enrollment signs with the stack's CA


def test_the_rollup_job_reads_the_stacks_database_and_its_ops_port(
    startup: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollup job reads and writes the stack's database over the v1 API (so it manages
    the retention policies) and serves /metrics and /healthz on the stack's port."""
    _read(monkeypatch, startup.rollups_env())
    s = RollupsSettings()
    assert (s.influx.url, s.influx.database, s.influx.api) == (
        "http://127.0.0.1:18086",
        DATABASE,
        "v1",
    )
    assert s.manage_retention
    assert s.http_port == 19465


def test_the_sessions_job_reads_the_stacks_database_and_its_ops_port(
    startup: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sessions job reads and writes the stack's database over the v1 API (so it creates
    ``keep``) and serves /metrics and /healthz on the stack's port."""
    _read(monkeypatch, startup.sessions_env())
    s = SessionsSettings()
    assert (s.influx.url, s.influx.database, s.influx.api) == (
        "http://127.0.0.1:18086",
        DATABASE,
        "v1",
    )
    assert s.http_port == 19467


def test_a_gateway_reads_its_identity_outbox_and_simulation(
    startup: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A simulated gateway connects with its own certificate, keeps its outbox under edge/
    and simulates the asked number of chargers at the asked interval."""
    _read(monkeypatch, startup.gateway_env("gw-1", startup.gateways["gw-1"]))
    s = EdgeSettings()
    assert s.gateway_id == "gw-1"
    assert s.outbox_path == startup.dir / "edge" / "gw-1.sqlite3"
    assert (s.mqtt.port, s.mqtt.cert_file) == (18883, startup.pki.dir / "gw-1.crt")
    assert (s.sim.chargers, s.sim.interval_s) == (3, 0.5)
    assert s.topic_root == "fleet/v9"
