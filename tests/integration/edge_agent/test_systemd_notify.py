"""``edge-agent run`` under a service manager: with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set as
systemd sets them for a ``Type=notify`` unit with ``WatchdogSec=``, the agent (this tree's code,
a process of its own, against a real Mosquitto) sends ``READY=1``, then ``WATCHDOG=1`` again and
again, and ``STOPPING=1`` on SIGTERM, on a real AF_UNIX datagram socket."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.edge_agent.test_agent import edge_env, unique
from tests.support.fixtures import BrokerInfo
from tests.support.processes import Procs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(30)
    yield sock, path
    sock.close()


def test_ready_watchdog_and_stopping(
    broker: BrokerInfo,
    procs: Procs,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    """READY=1 first, then at least two WATCHDOG=1 (every half of the 0.4 s interval), then
    STOPPING=1 after SIGTERM; the agent exits 0."""
    sock, path = notify_socket
    gateway = unique("gw-notify")
    env = edge_env(broker, gateway, tmp_path / "outbox.sqlite3")
    env |= {
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": "400000",
        "TELEMETRY_EDGE_ENV_FILE": "",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-c", "from edge_agent.cli import main; main()", "run"]
    agent = procs.start("edge", [*argv, "--source", "sim"], env)

    first = sock.recv(4096).decode().splitlines()
    assert first[0] == "READY=1", agent.log_tail()
    pings = [sock.recv(4096) for _ in range(2)]
    assert pings == [b"WATCHDOG=1"] * 2

    assert agent.stop() == 0, agent.log_tail()
    rest = []
    sock.settimeout(1)
    try:
        while True:
            rest.append(sock.recv(4096))
    except TimeoutError:
        pass
    assert rest[-1] == b"STOPPING=1"
    assert set(rest[:-1]) <= {b"WATCHDOG=1"}
