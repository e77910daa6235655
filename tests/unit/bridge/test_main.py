"""``telemetry-bridge`` refuses settings that cannot work at once, naming the variable, before
it waits for any server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.settings import BridgeSettings
from telemetry_common.settings import env_for, env_name


def run_bridge(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    # Nothing listens on port 1: a bridge that got past its settings would wait there.
    unreachable = env_for(
        BridgeSettings, influx={"url": "http://127.0.0.1:1"}, mqtt={"port": 1}, http_port=0
    )
    return subprocess.run(
        [sys.executable, "-m", "bridge"],
        env=base | unreachable | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"cp-1": 7}', '{"cp 1": "gw-1"}'])
def test_a_bindings_file_that_cannot_work_stops_the_bridge_at_once(
    tmp_path: Path, content: str
) -> None:
    """A bindings file that is no JSON object of charger -> gateway ends the bridge with exit 2
    and a message naming TELEMETRY_BRIDGE_BINDINGS_FILE, without waiting for InfluxDB."""
    path = tmp_path / "bindings.json"
    path.write_text(content)
    done = run_bridge(env_for(BridgeSettings, bindings_file=path))
    assert done.returncode == 2
    assert env_name(BridgeSettings, "bindings_file") in done.stderr
    assert str(path) in done.stderr


def test_an_unknown_bindings_mode_is_named_by_its_variable() -> None:
    """TELEMETRY_BRIDGE_BINDINGS takes provisioned or first-come only."""
    done = run_bridge({env_name(BridgeSettings, "bindings"): "whoever-asks"})
    assert done.returncode == 2
    assert "TELEMETRY_BRIDGE_BINDINGS" in done.stderr


def test_a_malformed_setting_is_named_by_its_variable() -> None:
    """A value of the wrong type ends the bridge with exit 2, naming the nested variable."""
    done = run_bridge({env_name(BridgeSettings, "mqtt", "port"): "not-a-port"})
    assert done.returncode == 2
    assert "TELEMETRY_BRIDGE_MQTT__PORT" in done.stderr
