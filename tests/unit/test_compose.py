"""The container stack's wiring: docker-compose.yml, docker/Dockerfile and what they mount.

No container runs here (the test machine may have no Docker engine). These tests read the files
and pin what a `docker compose up` relies on: the services and their start order, pinned images,
healthchecks, what is published, and environment variables that the services' settings classes
really read (a misspelt ``__`` name would be silently ignored by pydantic-settings).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from telemetry_common.settings import InfluxSettings, MqttSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

APP_SERVICES = {"pki-init", "bridge", "api", "gateway-1"}
LONG_RUNNING = {"mosquitto", "influxdb", "bridge", "api", "gateway-1", "grafana"}

#: service -> (env prefix, module of its settings class, contract: top-level names -> group).
SERVICE_SETTINGS: dict[str, tuple[str, str, dict[str, type[BaseModel] | None]]] = {
    "bridge": (
        "TELEMETRY_BRIDGE_",
        "bridge.settings",
        {"topic_root": None, "client_id": None, "mqtt": MqttSettings, "influx": InfluxSettings},
    ),
    "api": (
        "TELEMETRY_API_",
        "query_api.settings",
        {"host": None, "port": None, "topic_root": None, "keys": None, "influx": InfluxSettings},
    ),
    "gateway-1": (
        "TELEMETRY_EDGE_",
        "edge_agent.settings",
        {"gateway_id": None, "outbox_path": None, "topic_root": None, "mqtt": MqttSettings},
    ),
}
#: Nested groups the contract names but telemetry_common does not define (edge_agent does).
CONTRACT_ONLY_GROUPS = {("gateway-1", "sim"): {"chargers", "interval_s"}}

_VARIABLE = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>:?-)?(?P<default>[^}]*)\}"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def _interpolate(value: str) -> str:
    """Compose's interpolation with no variable set: every ``${VAR:-default}`` -> default."""
    return _VARIABLE.sub(lambda m: m["default"], value).replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host_ip, published, target)`` for each published port ("" = every interface)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 1:
            raise AssertionError(f"{port!r} publishes a random host port; name it")
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in a field's annotation (``Model``, ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _settings_class(module_name: str, prefix: str) -> type[ServiceSettings] | None:
    """The service's settings class (the ServiceSettings subclass with ``prefix``), if written."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None
        raise
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, ServiceSettings)
            and obj.__module__ == module_name
            and obj.model_config.get("env_prefix") == prefix
        ):
            return obj
    raise AssertionError(f"{module_name} has no ServiceSettings subclass with prefix {prefix}")


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    """The stack is exactly the one-shot PKI step plus the six long-running services."""
    assert set(services) == APP_SERVICES | LONG_RUNNING


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    """Third-party images are pinned to the stated versions; the Python services share one
    image built from docker/Dockerfile at the repository root."""
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", services["grafana"]["image"])
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == "docker/Dockerfile"
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    """Every long-running service has an enabled healthcheck with a command and a retry
    budget; the one-shot pki-init is never restarted."""
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert len(check["test"]) > 1, name
        assert int(check["retries"]) >= 3, name
    assert services["pki-init"]["restart"] == "no"
    assert "healthcheck" not in services["pki-init"]


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    """Services wait for what they use: healthy servers, and a finished pki-init for everyone
    who reads certificates or the broker config."""
    done, healthy = "service_completed_successfully", "service_healthy"
    expected = {
        "pki-init": {},
        "mosquitto": {"pki-init": done},
        "influxdb": {},
        "bridge": {"pki-init": done, "mosquitto": healthy, "influxdb": healthy},
        "api": {"influxdb": healthy},
        "gateway-1": {"pki-init": done, "mosquitto": healthy},
        "grafana": {"influxdb": healthy},
    }
    for name, deps in expected.items():
        got = {dep: cond["condition"] for dep, cond in services[name].get("depends_on", {}).items()}
        assert got == deps, name


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    """MQTT over TLS (8883) and the API (8000) are reachable from outside; the plaintext
    listener (1883) is published by no service; InfluxDB and Grafana only on loopback."""
    assert ("", 8883, 8883) in _published(services["mosquitto"])
    assert ("", 8000, 8000) in _published(services["api"])
    for name, service in services.items():
        for host_ip, published, target in _published(service):
            assert 1883 not in (published, target), f"{name} publishes the plaintext listener"
            if name in {"influxdb", "grafana"}:
                assert host_ip == "127.0.0.1", name
            else:
                assert (name, published) in {("mosquitto", 8883), ("api", 8000)}


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_env_names_are_settings_fields(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    """Each TELEMETRY_* variable of a service names a real field of its settings class (or,
    before that class exists, of the contract's names and telemetry_common's groups)."""
    prefix, module_name, contract = SERVICE_SETTINGS[service_name]
    cls = _settings_class(module_name, prefix)
    env = _environment(services[service_name])
    assert env, service_name
    for key in env:
        assert key.startswith(prefix), f"{service_name}: {key} lacks the prefix {prefix}"
        top, _, nested = key.removeprefix(prefix).lower().partition("__")
        if cls is not None:
            assert top in cls.model_fields, f"{key}: {cls.__name__} has no field {top!r}"
            group = _model_of(cls.model_fields[top].annotation) if nested else None
        else:
            assert top in contract, f"{key}: not a setting the contract names"
            group = contract[top]
        if not nested:
            continue
        assert "__" not in nested, key
        if group is None and (service_name, top) in CONTRACT_ONLY_GROUPS and cls is None:
            assert nested in CONTRACT_ONLY_GROUPS[service_name, top], key
            continue
        assert group is not None, f"{key}: {top!r} is not a nested group"
        assert nested in group.model_fields, f"{key}: {group.__name__} has no field {nested!r}"


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_env_values_are_accepted(
    services: dict[str, dict[str, Any]], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no variable set (the compose defaults), the service's settings class accepts its
    environment, and the nested groups carry the values given (strings parsed to types)."""
    prefix, module_name, _ = SERVICE_SETTINGS[service_name]
    env = _environment(services[service_name])
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cls = _settings_class(module_name, prefix)
    groups: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        top, _, nested = key.removeprefix(prefix).lower().partition("__")
        if nested:
            groups.setdefault(top, {})[nested] = value
    if cls is not None:
        settings: BaseSettings = cls()
        for top, values in groups.items():
            group = getattr(settings, top)
            for field in values:
                assert getattr(group, field) is not None, f"{top}.{field}"
    common: dict[str, type[BaseModel]] = {"mqtt": MqttSettings, "influx": InfluxSettings}
    for top, values in groups.items():
        if top in common:
            common[top].model_validate(values)


def test_certificates_match_identities(services: dict[str, dict[str, Any]]) -> None:
    """The bridge presents the telemetry-bridge certificate and the gateway the certificate
    named after its id (CN = MQTT username, which the broker ACL fences); pki-init issues the
    gateway's and hands both keys to the services' user."""
    from telemetry_stack.pki import BRIDGE_IDENTITY

    bridge = _environment(services["bridge"])
    gateway = _environment(services["gateway-1"])
    gw_id = gateway["TELEMETRY_EDGE_GATEWAY_ID"]
    for env, prefix, identity in (
        (bridge, "TELEMETRY_BRIDGE_MQTT__", BRIDGE_IDENTITY),
        (gateway, "TELEMETRY_EDGE_MQTT__", gw_id),
    ):
        assert env[prefix + "HOST"] == "mosquitto"
        assert env[prefix + "PORT"] == "8883"
        assert env[prefix + "CA_FILE"] == "/pki/ca.crt"
        assert env[prefix + "CERT_FILE"] == f"/pki/{identity}.crt"
        assert env[prefix + "KEY_FILE"] == f"/pki/{identity}.key"
    script = "\n".join(services["pki-init"]["command"])
    assert f"pki gateway {gw_id} --dir /pki" in script
    assert "--host mosquitto" in script  # the broker certificate names the host clients dial
    for name in ("bridge", "gateway-1", "mosquitto"):
        assert "pki:/pki:ro" in services[name]["volumes"], name
    assert "pki:/pki" in services["pki-init"]["volumes"]


def test_one_topic_root(services: dict[str, dict[str, Any]]) -> None:
    """The broker ACL (rendered by pki-init) and every service use the same topic root."""
    script = "\n".join(services["pki-init"]["command"])
    roots = set(re.findall(r"--topic-root (\S+)", script))
    for name in SERVICE_SETTINGS:
        roots |= {v for k, v in _environment(services[name]).items() if k.endswith("_TOPIC_ROOT")}
    assert roots == {"chargers/v1"}


def test_every_variable_has_a_default() -> None:
    """`docker compose up` works without a .env file: each ${VAR} has a ``:-`` default."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    found = list(_VARIABLE.finditer(text))
    assert found
    for match in found:
        assert match["sep"] == ":-", match[0]
        assert match["default"], match[0]
    assert not re.search(r"(?<!\$)\$(?![{$])", text), "a bare $VAR or unescaped $"


def test_influxdb_init_and_grafana_datasource(services: dict[str, dict[str, Any]]) -> None:
    """InfluxDB maps the InfluxQL database `telemetry` onto its `telemetry` bucket with an
    executable init script, and Grafana's provisioned datasource queries that database with
    InfluxQL and the same token."""
    influx = _environment(services["influxdb"])
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"
    assert influx["TELEMETRY_INFLUXQL_DATABASE"] == InfluxSettings().database
    assert (
        "./docker/influxdb-init:/docker-entrypoint-initdb.d:ro" in services["influxdb"]["volumes"]
    )
    script = ROOT / "docker" / "influxdb-init" / "10-dbrp.sh"
    assert os.access(script, os.X_OK), "the image runs only executable init scripts"
    assert "influx v1 dbrp create" in script.read_text(encoding="utf-8")

    ds_file = ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
    (ds,) = yaml.safe_load(ds_file.read_text(encoding="utf-8"))["datasources"]
    assert ds["type"] == "influxdb"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["dbName"] == "telemetry"
    assert ds["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    token = _environment(services["grafana"])["INFLUXDB_TOKEN"]
    assert token == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert token == _environment(services["bridge"])["TELEMETRY_BRIDGE_INFLUX__TOKEN"]
    assert token == _environment(services["api"])["TELEMETRY_API_INFLUX__TOKEN"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]


def test_image_holds_every_package_and_the_broker_templates() -> None:
    """The Dockerfile is multi-stage on python:3.11-slim, ends as a non-root user, and copies
    (and .dockerignore lets through) every package pyproject installs plus mosquitto/, which
    telemetry_stack reads its broker templates from."""
    from telemetry_stack.broker_config import TEMPLATE_DIR

    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS (\w+)", text, re.M) == ["builder", "runtime"]
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "the image must not run as root"
    assert users[-1] not in {"root", "0", "0:0"}
    assert "pip install --no-deps -e ." in text

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert TEMPLATE_DIR.parent == ROOT
    for folder in [*packages, TEMPLATE_DIR.name]:
        assert f"COPY {folder}/ {folder}/" in text, folder
        assert f"!{folder}/" in ignore, folder
    for script in pyproject["project"]["scripts"]:
        assert script in text, f"the build does not check for {script}"


def test_docker_compose_config_accepts_the_file() -> None:
    """`docker compose config` (the reference parser) accepts the file and its interpolation."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if version.returncode != 0:
        pytest.skip(f"`docker compose` is not available: {version.stderr.strip()[:200]}")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
