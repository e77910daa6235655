"""The packaged unit under a real systemd: a Debian 12 root with systemd, booted in
``systemd-nspawn`` (sharing the host's network, so its loopback reaches the test stack).

Boot 1, before enrolment: systemd skips the unit (``ConditionPathExists=`` the certificate).
Boot 2, with the gateway's credentials and an operator's drop-in (``--source sim``, a 2 s
watchdog): the unit starts (``Type=notify``: systemd reports it started only after the agent's
``READY=1``), keeps the watchdog fed, runs with all of its hardening (seccomp filter,
``ProtectSystem=strict``, no capabilities, ...) as ``charger-telemetry``, publishes over TLS
until its readings are in InfluxDB, and stops cleanly when the container shuts down. What
happened is read from the container's journal.

Needs root and ``systemd-nspawn`` (the systemd-container package); the root is cached like
test_debootstrap's. Skipped, with the reason, where the container cannot boot.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from telemetry_stack.servers import ManagedProcess
from tests.integration.package.conftest import tool
from tests.integration.package.test_debootstrap import (
    _configure,
    _credentials,
    _enrollment_api,
    _ids,
    _install,
    _stored,
    debootstrap,
    remove_root,
)
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import poll, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNIT = "charger-telemetry-edge.service"


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tool("systemd-nspawn")  # the systemd-container package
    root = debootstrap(tmp_path_factory, ("python3", "systemd", "systemd-sysv", "dbus"))
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # a persistent journal
    yield root
    remove_root(root)


def _journal(root: Path) -> list[dict[str, str]]:
    """The container's journal entries about the unit (systemd's and the agent's)."""
    done = subprocess.run(
        [tool("journalctl"), "-D", str(root / "var/log/journal"), "-o", "json", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [
        e
        for e in entries
        if e.get("UNIT") == UNIT
        or e.get("_SYSTEMD_UNIT") == UNIT
        or UNIT in str(e.get("MESSAGE", ""))
    ]


def _messages(root: Path) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in _journal(root)]


def _boot(procs: Procs, root: Path, name: str) -> ManagedProcess:
    argv = [tool("systemd-nspawn"), "-D", str(root), "--register=no", "--keep-unit", "-b"]
    container = ManagedProcess(name, argv, log_file=procs.logs / f"{name}.log", env=None)
    container.start()
    procs.started.append(container)
    return container


def test_the_unit_under_systemd(
    systemd_root: Path, deb: Path, broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs
) -> None:
    """Skipped until enrolled; once enrolled it starts (READY), keeps the watchdog fed,
    publishes from its sandbox as charger-telemetry, and stops cleanly with the container."""
    root = systemd_root
    _install(root, deb)

    container = _boot(procs, root, "nspawn-1")
    skipped = poll(
        lambda: any("unmet condition" in m for m in _messages(root)) or not container.is_running(),
        timeout=90,
    )
    if not (skipped and container.is_running()):
        container.stop(timeout=60)
        pytest.skip(f"the container did not boot here: {container.log_tail()[-1500:]}")
    assert container.stop(timeout=60) == 0, container.log_tail()

    gateway = f"gw-nspawn-{uuid.uuid4().hex[:6]}"
    _configure(root, broker, gateway)
    _credentials(root, gateway, broker, _enrollment_api(procs, influx_db, broker))
    dropin = root / "etc/systemd/system" / f"{UNIT}.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "source.conf").write_text(
        "[Service]\nExecStart=\nExecStart=/usr/bin/edge-agent run --source sim\n"
        # A short watchdog: the run below lasts several intervals, so missing pings would
        # show as "Watchdog timeout" and a restart.
        "WatchdogSec=2\n"
    )
    start_bridge(procs, broker, influx_db)

    container = _boot(procs, root, "nspawn-2")
    wait_until(
        "the service's readings in InfluxDB (5 a second: >= 6 s of running)",
        lambda: _stored(influx_db, gateway) >= 30 or not container.is_running(),
        timeout=120,
    )
    assert _stored(influx_db, gateway) >= 30, container.log_tail()
    assert container.stop(timeout=60) == 0, container.log_tail()

    messages = _messages(root)
    assert any(m.startswith("Started charger-telemetry-edge.service") for m in messages)
    assert any("Deactivated successfully" in m for m in messages)
    assert not [m for m in messages if "Watchdog timeout" in m or "Failed with result" in m]
    assert sum(m.startswith("Started charger-telemetry-edge.service") for m in messages) == 1
    uid, _ = _ids(root, "charger-telemetry")
    agent = [e for e in _journal(root) if e.get("SYSLOG_IDENTIFIER") == "edge-agent"]
    assert agent
    assert {e.get("_UID") for e in agent} == {str(uid)}
