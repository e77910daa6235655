"""Types of the shared pytest fixtures (tests/conftest.py), importable for annotations:

from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt

from provisioning.pki import SERVICE_IDENTITIES, Pki, issue_client
from telemetry_common.topics import DEFAULT_ROOT, Topics


@dataclass(frozen=True)
class TestPki:
    """The ``pki`` fixture: a dev CA; client certificates are issued on first use."""

    __test__ = False  # not a test class, whatever its name

    dir: Path
    _issued: dict[str, tuple[Path, Path]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def pki(self) -> Pki:
        return Pki(self.dir)

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    def client(self, name: str) -> tuple[Path, Path]:
        """``(cert_path, key_path)`` of client ``name`` (CN = name), issued on the first call."""
        if name not in self._issued:
            self._issued[name] = issue_client(self.dir, name)
        return self._issued[name]


@dataclass(frozen=True)
class BrokerInfo:
    """The ``broker`` fixture: a running Mosquitto with the project's configuration.

    ``tls_port`` is the gateways' TLS listener, ``service_port`` the services' (bridge, API,
    operator: certificates of the services CA only); :meth:`port_for` picks by identity."""

    tls_port: int
    local_port: int
    ca_file: Path
    pki: TestPki
    service_port: int
    host: str = "127.0.0.1"
    topic_root: str = DEFAULT_ROOT

    def port_for(self, identity: str) -> int:
        """The TLS listener a client with certificate CN ``identity`` connects to."""
        return self.service_port if identity in SERVICE_IDENTITIES else self.tls_port

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)


@dataclass(frozen=True)
class InfluxInfo:
    """The ``influxd`` fixture: a running InfluxDB 1.x (v1 HTTP API, no auth)."""

    url: str


@dataclass(frozen=True)
class InfluxTarget:
    """The ``influx_db`` fixture: a fresh database on ``influxd``, dropped afterwards."""

    url: str
    database: str


class MqttClientFactory(Protocol):
    """The ``mqtt_client`` fixture: MQTT 5 clients, TLS with ``pki.client(identity)`` when an
    identity is given (else plaintext on the loopback listener, anonymous)."""

    def __call__(
        self, identity: str | None, *, client_id: str | None = None, connect: bool = True
    ) -> mqtt.Client: ...
