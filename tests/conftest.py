"""Shared fixtures: a dev PKI, a real Mosquitto, a real InfluxDB 1.x and MQTT 5 clients.

Servers are the installed binaries (`make bootstrap` installs them), started once per session on
free loopback ports through ``telemetry_stack.servers`` (the code `telemetry-stack up` uses) and
stopped by PID at the end. A missing binary skips the tests that need it, with the reason.

With ``TELEMETRY_TEST_DOCKER=1`` the broker runs in the ``eclipse-mosquitto:2.0.22`` image through
testcontainers instead (host networking, so its listeners are loopback ones on the host).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import broker_config
from provisioning.pki import init as pki_init
from telemetry_common.tls import client_context
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack.servers import (
    ServerBinaryMissing,
    free_port,
    port_open,
    start_influxd,
    start_mosquitto,
)
from tests.support.fixtures import (
    BrokerInfo,
    InfluxInfo,
    InfluxTarget,
    MqttClientFactory,
    TestPki,
)

__all__ = ["BrokerInfo", "InfluxInfo", "InfluxTarget", "MqttClientFactory", "TestPki"]

CONNECT_TIMEOUT_S = 10.0


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A dev CA with the broker's and the bridge's certificates."""
    directory = tmp_path_factory.mktemp("pki")
    pki_init(directory)
    return TestPki(directory)


# --- broker ---------------------------------------------------------------------------------


def _docker_broker(
    pki: TestPki, state: Path, tls_port: int, local_port: int, service_port: int
) -> Iterator[None]:
    """Mosquitto in ``eclipse-mosquitto:2.0.22`` (TELEMETRY_TEST_DOCKER=1). No Docker engine exists
    on the machines this was written on, so this path has not been run; keep it small."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient

    try:
        DockerClient().client.ping()
    except Exception as exc:  # any failure means: no usable engine
        pytest.skip(f"TELEMETRY_TEST_DOCKER=1 but no Docker engine is reachable: {exc}")
    data = state / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = broker_config.render(
        state,
        pki_dir=pki.dir,
        tls_port=tls_port,
        local_port=local_port,
        service_port=service_port,
        persistence_dir=data,
        topic_root=DEFAULT_ROOT,
        run_as_user="root",  # the image would drop to 'mosquitto', who cannot read 0600 keys
    )
    container = (
        DockerContainer("eclipse-mosquitto:2.0.22")
        .with_kwargs(network_mode="host")
        .with_volume_mapping(str(state), str(state), "rw")
        .with_volume_mapping(str(pki.dir), str(pki.dir), "ro")
        .with_command(f"mosquitto -c {files.conf_file}")
    )
    container.start()
    try:
        deadline = time.monotonic() + 60
        while not all(port_open("127.0.0.1", p) for p in (tls_port, local_port, service_port)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"eclipse-mosquitto:2.0.22 not ready: {container.get_logs()}")
            time.sleep(0.2)
        yield
    finally:
        container.stop()


@pytest.fixture(scope="session")
def broker(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A running Mosquitto: TLS listener (client certificates) + loopback plaintext listener."""
    yield from run_broker(pki, tmp_path_factory.mktemp("mosquitto"))


def run_broker(pki: TestPki, state: Path) -> Iterator[BrokerInfo]:
    """A Mosquitto with its state in ``state`` while the generator is suspended (the body of
    the session ``broker`` fixture; a test that needs a broker of its own yields from it)."""
    tls_port, local_port, service_port = _distinct_ports(3)
    info = BrokerInfo(
        tls_port=tls_port,
        local_port=local_port,
        ca_file=pki.ca_file,
        pki=pki,
        service_port=service_port,
    )
    if os.environ.get("TELEMETRY_TEST_DOCKER") == "1":
        for _ in _docker_broker(pki, state, tls_port, local_port, service_port):
            yield info
        return
    try:
        proc = start_mosquitto(
            state, pki.pki, tls_port, local_port, info.topic_root, service_port=service_port
        )
    except ServerBinaryMissing as exc:
        pytest.skip(str(exc))
    try:
        yield info
    finally:
        proc.stop()


# --- InfluxDB -------------------------------------------------------------------------------
# Always the local influxd 1.x, even with TELEMETRY_TEST_DOCKER=1: the fixtures promise the v1
# API without auth (CREATE/DROP DATABASE), which the influxdb:2.7 image does not offer.


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxInfo]:
    """A running InfluxDB 1.x on a free loopback port (v1 HTTP API, no auth)."""
    state = tmp_path_factory.mktemp("influxd")
    port = free_port()
    try:
        proc = start_influxd(state, port)
    except ServerBinaryMissing as exc:
        pytest.skip(str(exc))
    try:
        yield InfluxInfo(url=f"http://127.0.0.1:{port}")
    finally:
        proc.stop()


def _influxql(url: str, statement: str) -> None:
    resp = httpx.post(f"{url}/query", data={"q": statement}, timeout=10.0)
    resp.raise_for_status()
    body = resp.json()
    errors = [r["error"] for r in body.get("results", []) if "error" in r]
    if "error" in body or errors:
        raise RuntimeError(f"InfluxQL {statement!r} failed: {body}")


@pytest.fixture
def influx_db(influxd: InfluxInfo) -> Iterator[InfluxTarget]:
    """A fresh, uniquely named database on ``influxd``; dropped afterwards."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    _influxql(influxd.url, f'CREATE DATABASE "{database}"')
    try:
        yield InfluxTarget(url=influxd.url, database=database)
    finally:
        _influxql(influxd.url, f'DROP DATABASE "{database}"')


# --- MQTT clients ---------------------------------------------------------------------------


@pytest.fixture
def mqtt_client(broker: BrokerInfo) -> Iterator[MqttClientFactory]:
    """Factory of MQTT 5 paho clients; each is disconnected and its loop stopped at teardown.

    ``identity`` given: TLS with ``pki.client(identity)`` on its listener (``port_for``: the
    services' or the gateways'). ``None``: plaintext, anonymous, on the loopback listener.
    ``connect=False``: configured only; the caller connects (``client.connect(broker.host,
    port)``) and starts the loop.
    """
    made: list[mqtt.Client] = []

    def make(
        identity: str | None, *, client_id: str | None = None, connect: bool = True
    ) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        made.append(client)
        port = broker.local_port
        if identity is not None:
            cert, key = broker.pki.client(identity)
            client.tls_set_context(client_context(broker.ca_file, cert, key))
            port = broker.port_for(identity)
        if not connect:
            return client
        connected = threading.Event()
        outcome: list[ReasonCode] = []

        def on_connect(
            _c: mqtt.Client,
            _u: object,
            _f: mqtt.ConnectFlags,
            reason_code: ReasonCode,
            _p: Properties | None,
        ) -> None:
            outcome.append(reason_code)
            connected.set()

        client.on_connect = on_connect
        client.connect(broker.host, port, keepalive=30)
        client.loop_start()
        if not connected.wait(CONNECT_TIMEOUT_S):
            raise TimeoutError(f"no CONNACK for {identity or 'anonymous'} within 10s")
        if outcome[0].is_failure:
            raise ConnectionRefusedError(f"broker refused {identity or 'anonymous'}: {outcome[0]}")
        return client

    yield make
    for client in made:
        client.disconnect()
        client.loop_stop()
