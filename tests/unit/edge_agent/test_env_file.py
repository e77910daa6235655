"""The agent's configuration file (edge_agent.settings.env_file): read by ``edge-agent`` run by
hand as by the systemd unit; variables in the environment win over it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from edge_agent import settings as edge_settings
from edge_agent.budget import Budget
from edge_agent.cli import app
from edge_agent.outbox import Outbox
from edge_agent.settings import ENV_FILE_VAR, env_file, load_edge_settings
from telemetry_common.errors import ConfigError
from telemetry_common.settings import env_name
from tests.support.outbox_readings import energy


def _write(path: Path, **lines: str) -> Path:
    path.write_text("# a comment\n" + "".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def test_the_named_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values come from the file; a variable also set in the environment takes the latter."""
    gw, port, outbox = (
        env_name(edge_settings.EdgeSettings, "gateway_id"),
        env_name(edge_settings.EdgeSettings, "mqtt", "port"),
        env_name(edge_settings.EdgeSettings, "outbox_path"),
    )
    path = _write(tmp_path / "edge.env", **{gw: "gw-file", port: "18883", outbox: "/x/o.db"})
    monkeypatch.setenv(ENV_FILE_VAR, str(path))
    monkeypatch.delenv(gw, raising=False)
    monkeypatch.delenv(outbox, raising=False)
    monkeypatch.setenv(port, "28883")
    settings = load_edge_settings()
    assert settings.gateway_id == "gw-file"
    assert settings.outbox_path == Path("/x/o.db")
    assert settings.mqtt.port == 28883


def test_a_named_file_that_is_missing_is_refused(tmp_path: Path) -> None:
    """A typo in TELEMETRY_EDGE_ENV_FILE is an error naming it, not a silent default."""
    with pytest.raises(ConfigError, match=ENV_FILE_VAR):
        env_file({ENV_FILE_VAR: str(tmp_path / "nope.env")})


def test_the_default_file_is_used_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, /etc/charger-telemetry/edge.env is read if it exists; set but empty: no file."""
    default = _write(tmp_path / "edge.env", TELEMETRY_EDGE_GATEWAY_ID="gw-default")
    monkeypatch.setattr(edge_settings, "DEFAULT_ENV_FILE", default)
    assert env_file({}) == default
    assert env_file({ENV_FILE_VAR: ""}) is None
    monkeypatch.setattr(edge_settings, "DEFAULT_ENV_FILE", tmp_path / "absent.env")
    assert env_file({}) is None


def test_outbox_commands_find_the_configured_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``edge-agent outbox stats`` without --path opens the outbox the configuration file names
    (an installed gateway's), and says where it looked when there is none."""
    outbox = tmp_path / "state" / "outbox.sqlite3"
    outbox.parent.mkdir()
    env = _write(
        tmp_path / "edge.env",
        TELEMETRY_EDGE_GATEWAY_ID="gw-cli",
        TELEMETRY_EDGE_OUTBOX_PATH=str(outbox),
    )
    for name in ("TELEMETRY_EDGE_GATEWAY_ID", "TELEMETRY_EDGE_OUTBOX_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_FILE_VAR, str(env))
    runner = CliRunner()
    missing = runner.invoke(app, ["outbox", "stats", "--json"])
    assert missing.exit_code == 1
    assert str(outbox) in missing.output
    with Outbox(outbox, Budget()) as box:
        box.append([energy(1)])
    done = runner.invoke(app, ["outbox", "stats", "--json"])
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.output)["pending"] == 1
