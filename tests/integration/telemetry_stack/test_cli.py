"""The README's run command: `telemetry-stack up` brings the whole stack up from the installed
binaries, the printed key reads live readings of the simulated chargers, and stopping it (`down`,
or Ctrl-C in the foreground) leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from telemetry_stack.servers import pid_alive
from tests.support.waiting import wait_until

SERVICES = {"mosquitto", "influxd", "bridge", "api", "rollups", "sessions", "gateway-1"}

pytestmark = pytest.mark.integration

STACK = str(Path(sys.executable).parent / "telemetry-stack")


def _pids(state: dict[str, Any]) -> dict[str, int]:
    """The services with a recorded PID (a stopped service has none)."""
    return {name: svc["pid"] for name, svc in state["services"].items() if svc["pid"] is not None}


def _latest(state: dict[str, Any], charger: str, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(
        f"{state['api']['url']}/v1/chargers/{charger}/latest", headers=headers, timeout=5
    )


def _stop_leftovers(state_dir: Path) -> None:
    """Safety net: whatever a failed test left running is killed by PID."""
    path = state_dir / "stack.json"
    if path.exists():
        for pid in _pids(orjson.loads(path.read_bytes())).values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_up_detached_serves_live_readings_and_down_stops_everything(tmp_path: Path) -> None:
    """`up --detach` writes stack.json as docs/design.md describes; the read key returns a simulated
    charger's latest reading (401 without it); the retained live topic is readable on the local
    listener; `status --json` lists the services; `down` leaves no process running."""
    state_dir = tmp_path / "stack"
    try:
        up = subprocess.run(
            [STACK, "up", "--state-dir", str(state_dir), "--gateways", "1", "--chargers", "2",
             "--interval", "0.2", "--detach"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        state = orjson.loads((state_dir / "stack.json").read_bytes())
        assert state["topic_root"] == "chargers/v1"
        assert set(state["mqtt"]) >= {"host", "tls_port", "ca_file", "local_port"}
        assert set(state["gateways"]["gw-1"]) >= {"cert_file", "key_file"}
        assert state["influx"]["database"] == "telemetry"
        assert set(state["api"]["keys"]) == {"read", "ingest", "admin"}
        assert set(_pids(state)) == {
            "mosquitto",
            "influxd",
            "bridge",
            "api",
            "rollups",
            "sessions",
            "gateway-1",
        }
        read_key = state["api"]["keys"]["read"]
        assert read_key in up.stdout  # the ready-to-paste curl

        wait_until(
            "gw-1-cp001 in the API", lambda: _latest(state, "gw-1-cp001", read_key).is_success
        )
        first = _latest(state, "gw-1-cp001", read_key).json()
        assert _latest(state, "gw-1-cp001", None).status_code == 401
        wait_until(
            "a newer reading",
            lambda: _latest(state, "gw-1-cp001", read_key).json()["seq"] > first["seq"],
            timeout=30,
        )

        live: list[bytes] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda _c, _u, msg: live.append(bytes(msg.payload))
        sub.connect("127.0.0.1", state["mqtt"]["local_port"])
        sub.subscribe("chargers/v1/live/gw-1-cp002", qos=1)
        sub.loop_start()
        try:
            wait_until("the retained live value", lambda: bool(live), timeout=15)
        finally:
            sub.loop_stop()
            sub.disconnect()
        assert orjson.loads(live[0])["charger_id"] == "gw-1-cp002"

        # The rollup job created the rollups' retention policies in the stack's database.
        def policies() -> set[str]:
            answer = httpx.get(
                f"{state['influx']['url']}/query",
                params={"q": 'SHOW RETENTION POLICIES ON "telemetry"'},
                timeout=5,
            ).json()
            return {row[0] for row in answer["results"][0]["series"][0]["values"]}

        wait_until("the rollup policies", lambda: {"rollup_1m", "rollup_1h"} <= policies())

        status = subprocess.run(
            [STACK, "status", "--json", "--state-dir", str(state_dir)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        services = orjson.loads(status.stdout)["services"]
        assert all(svc["running"] and svc["ready"] for svc in services.values()), services

        down = subprocess.run(
            [STACK, "down", "--state-dir", str(state_dir)],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr
        assert [n for n, pid in _pids(state).items() if pid_alive(pid)] == []
    finally:
        _stop_leftovers(state_dir)


def test_ctrl_c_in_the_foreground_stops_every_process(tmp_path: Path) -> None:
    """`up` in the foreground, then SIGINT (what Ctrl-C sends): every service it started exits."""
    state_dir = tmp_path / "stack"
    proc = subprocess.Popen(
        [STACK, "up", "--state-dir", str(state_dir), "--gateways", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []

    def read() -> None:  # `up` says when it is done starting; SIGINT before that is exit 130
        assert proc.stdout is not None
        for raw in proc.stdout:
            output.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        path = state_dir / "stack.json"

        def all_started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"up exited early: {''.join(output)!r}")
            return any("Ctrl-C stops everything" in line for line in output)

        wait_until("every service to start", all_started, timeout=120)
        pids = _pids(orjson.loads(path.read_bytes()))
        assert set(pids) == SERVICES
        assert all(pid_alive(pid) for pid in pids.values())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert [n for n, pid in pids.items() if pid_alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        _stop_leftovers(state_dir)
