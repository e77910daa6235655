"""Environment variable names are derived from the settings models, never typed by hand."""

from __future__ import annotations

import pytest

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from query_api.settings import ApiSettings
from telemetry_common.settings import env_for, env_name


def test_env_for_derives_names_that_the_model_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat and nested names round-trip: the variables env_for writes are the ones the service
    reads (prefix, upper case, ``__`` for a group)."""
    env = env_for(
        BridgeSettings,
        client_id="bridge-x",
        max_inflight=77,
        mqtt={"host": "10.9.8.7", "port": 18883},
        influx={"url": "http://127.0.0.1:1/"},
    )
    assert env == {
        "TELEMETRY_BRIDGE_CLIENT_ID": "bridge-x",
        "TELEMETRY_BRIDGE_MAX_INFLIGHT": "77",
        "TELEMETRY_BRIDGE_MQTT__HOST": "10.9.8.7",
        "TELEMETRY_BRIDGE_MQTT__PORT": "18883",
        "TELEMETRY_BRIDGE_INFLUX__URL": "http://127.0.0.1:1/",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = BridgeSettings()
    assert (s.client_id, s.max_inflight, s.mqtt.host, s.mqtt.port) == (
        "bridge-x",
        77,
        "10.9.8.7",
        18883,
    )
    assert s.influx.url == "http://127.0.0.1:1"


def test_env_for_renders_json_and_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dict that is not a settings group is JSON; booleans are spelled true/false."""
    env = env_for(ApiSettings, keys={"read": "r" * 16}, access_log=True)
    assert env["TELEMETRY_API_KEYS"] == '{"read": "' + "r" * 16 + '"}'
    assert env["TELEMETRY_API_ACCESS_LOG"] == "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ApiSettings().access_log is True


def test_env_for_refuses_a_name_the_model_does_not_have() -> None:
    """A typo fails loudly instead of setting a variable no service reads."""
    with pytest.raises(KeyError, match="gatway_id"):
        env_for(EdgeSettings, gatway_id="gw-1")
    with pytest.raises(KeyError, match="hostname"):
        env_for(EdgeSettings, mqtt={"hostname": "x"})


def test_env_name_names_one_variable_and_refuses_typos() -> None:
    """env_name spells the variable of one field (nested through a group) as env_for does, and
    refuses a name the model does not have."""
    assert env_name(BridgeSettings, "mqtt", "host") == next(
        iter(env_for(BridgeSettings, mqtt={"host": "x"}))
    )
    assert env_name(ApiSettings, "keys") == next(iter(env_for(ApiSettings, keys={"read": "k"})))
    assert env_name(EdgeSettings, "ocpp", "port") == "TELEMETRY_EDGE_OCPP__PORT"
    for path in (("mqtt", "hostname"), ("client_id", "x"), ("clientid",), ()):
        with pytest.raises(KeyError):
            env_name(BridgeSettings, *path)
