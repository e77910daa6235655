"""A Mosquitto of one test only, with the project's configuration, that the test may stop and
start again on the same ports and state (a broker outage)."""

from __future__ import annotations

from pathlib import Path

from telemetry_stack.servers import ManagedProcess, free_port, start_mosquitto
from tests.support.fixtures import BrokerInfo, TestPki


class OwnBroker:
    """A Mosquitto of this test only, restartable on the same ports and state."""

    def __init__(self, pki: TestPki, state: Path) -> None:
        self.pki = pki
        self.state = state
        self.info = BrokerInfo(free_port(), free_port(), pki.ca_file, pki, free_port())
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        self.proc = start_mosquitto(
            self.state,
            self.pki.pki,
            self.info.tls_port,
            self.info.local_port,
            "chargers/v1",
            service_port=self.info.service_port,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
