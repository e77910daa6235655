"""The container stack's wiring: docker-compose.yml, docker/, .env.example and grafana/.

No container runs here (the test machine may have no Docker engine). These tests read the files
and pin what a `docker compose up` relies on: the services and their start order, pinned images,
healthchecks, what is published, environment variables that the services' settings classes
really read (a misspelt ``__`` name would be silently ignored by pydantic-settings), the refusal
of placeholder secrets outside the dev profile, and dashboards that name only provisioned
datasources and metrics the services export. tests/integration/deploy/test_dashboards.py runs the
dashboards' InfluxQL against a real InfluxDB.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from query_api.settings import ApiSettings
from rollups.settings import RollupsSettings
from sessions.settings import SessionsSettings
from telemetry_common.settings import (
    InfluxSettings,
    MqttSettings,
    ServiceSettings,
    env_name,
    settings_of,
)
from telemetry_common.topics import Topics
from tests.support import compose_file
from tests.support.compose_file import COMPOSE_FILE, PREFLIGHT, ROOT
from tests.support.grafana import INFLUX_UID, PROMETHEUS_UID, load_dashboards, panels

DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERTMANAGER_CONFIG = ROOT / "docker" / "alertmanager" / "alertmanager.yml"
WEBHOOK_RECEIVER = ROOT / "docker" / "alertmanager" / "webhook_receiver.py"
PROVISIONING = ROOT / "grafana" / "provisioning"

GATEWAYS = {"gateway-1": "gw-1", "gateway-2": "gw-2"}
ONE_SHOT = {"preflight", "pki-init"}
APP_SERVICES = {*ONE_SHOT, "bridge", "api", "rollups", "sessions", *GATEWAYS, "alert-webhook"}
LONG_RUNNING = {
    "mosquitto",
    "influxdb",
    "bridge",
    "api",
    "rollups",
    "sessions",
    *GATEWAYS,
    "live-feed",
    "prometheus",
    "alertmanager",
    "alert-webhook",
    "grafana",
}
#: Every variable that holds a secret; each must pass docker/preflight.sh outside dev.
SECRETS = {
    "INFLUXDB_ADMIN_PASSWORD",
    "INFLUXDB_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
    "TELEMETRY_READ_KEY",
    "TELEMETRY_INGEST_KEY",
    "TELEMETRY_ADMIN_KEY",
    "TELEMETRY_BRIDGE_SECRET",
}

#: service -> the settings class that reads its TELEMETRY_* variables.
SERVICE_SETTINGS: dict[str, type[ServiceSettings]] = {
    "bridge": BridgeSettings,
    "api": ApiSettings,
    "rollups": RollupsSettings,
    "sessions": SessionsSettings,
    **dict.fromkeys(GATEWAYS, EdgeSettings),
}
#: service -> the script (in the container) that reads its TELEMETRY_* variables that are no
#: setting of a Python service: compose's own knobs (profile, secrets) and InfluxDB's init.
SCRIPT_VARIABLES: dict[str, Path] = {
    "preflight": PREFLIGHT,
    "influxdb": ROOT / "docker" / "influxdb-init" / "10-dbrp.sh",
}

_PLACEHOLDER = "change-me"


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


def _exported(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry exposes, labelled or not, with prometheus_client's
    suffixes (counter ``_total``, histogram ``_bucket``/``_count``/``_sum``)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def _edge_metrics(tmp_path: Path) -> set[str]:
    """The series names the edge agent's collector exposes (for an empty outbox)."""
    from edge_agent.metrics import registry_for
    from edge_agent.outbox import Outbox
    from edge_agent.publisher import Counters

    client = types.SimpleNamespace(connects=1, connected=True)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        return _exported(registry_for(box, Counters(), client))


# --- services, images, start order ------------------------------------------------------------


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    """The stack is the two one-shot steps (preflight, pki-init) plus the long-running servers,
    the bridge, the API, two simulated gateways, the live-feed subscriber, Prometheus,
    Alertmanager and its example webhook receiver."""
    assert set(services) == APP_SERVICES | LONG_RUNNING


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    """Third-party images are pinned: Mosquitto to a 2.0.x patch release (the `2` tag moved on
    to 2.1), InfluxDB to 2.7, Grafana and Prometheus to a full version; the Python services
    share one image built from docker/Dockerfile at the repository root."""
    for name in ("mosquitto", "live-feed"):
        assert re.fullmatch(r"eclipse-mosquitto:2\.0\.\d+", services[name]["image"]), name
    assert services["mosquitto"]["image"] == services["live-feed"]["image"]
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", services["alertmanager"]["image"])
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == "docker/Dockerfile"
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    for name, service in services.items():
        assert "image" in service, name
        assert not service["image"].endswith(":latest"), name


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    """Every long-running service has an enabled healthcheck with a command and a retry
    budget, and restarts; the one-shot steps are never restarted and have no healthcheck."""
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert len(check["test"]) > 1, name
        assert int(check["retries"]) >= 3, name
        assert services[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name
        assert "healthcheck" not in services[name], name


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    """Services wait for what they use: healthy servers, and finished one-shot steps for
    everyone who reads certificates or the broker config."""
    done, healthy = "service_completed_successfully", "service_healthy"
    gateway = {"pki-init": done, "mosquitto": healthy}
    expected = {
        "preflight": {},
        "pki-init": {"preflight": done},
        "mosquitto": {"pki-init": done},
        "influxdb": {"preflight": done},
        "bridge": {"pki-init": done, "mosquitto": healthy, "influxdb": healthy},
        "api": {"pki-init": done, "mosquitto": healthy, "influxdb": healthy},
        "rollups": {"influxdb": healthy},
        "sessions": {"influxdb": healthy},
        **dict.fromkeys(GATEWAYS, gateway),
        "live-feed": {"mosquitto": healthy},
        "prometheus": {"preflight": done},
        "alertmanager": {"preflight": done},
        "alert-webhook": {"preflight": done},
        "grafana": {"influxdb": healthy, "prometheus": healthy},
    }
    assert set(expected) == set(services)
    for name, deps in expected.items():
        assert compose_file.depends(services[name]) == deps, name


def test_depends_on_conditions_match_the_dependency(services: dict[str, dict[str, Any]]) -> None:
    """`service_completed_successfully` only on one-shot steps and `service_healthy` only on
    services with a healthcheck (either mismatch would block `up` forever or never wait)."""
    for name, service in services.items():
        for dep, condition in compose_file.depends(service).items():
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for {dep} to exit"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"


def test_preflight_gates_every_service(services: dict[str, dict[str, Any]]) -> None:
    """Nothing starts before preflight accepted the secrets: every service reaches it through
    its depends_on chain."""

    def reaches(name: str, seen: frozenset[str] = frozenset()) -> bool:
        deps = compose_file.depends(services[name])
        assert name not in seen, f"depends_on cycle through {name}"
        return "preflight" in deps or any(reaches(d, seen | {name}) for d in deps)

    for name in services:
        if name != "preflight":
            assert reaches(name), f"{name} can start before preflight"


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    """Only MQTT over TLS (8883) is reachable from outside by default; the API, InfluxDB,
    Grafana and Prometheus are published on loopback only, and the plaintext listener (1883)
    and the services' TLS listener (8884) by no service."""
    assert ("", 8883, 8883) in compose_file.published(services["mosquitto"])
    expected = {
        "api": ("127.0.0.1", 8000, 8000),
        "influxdb": ("127.0.0.1", 8086, 8086),
        "grafana": ("127.0.0.1", 3000, 3000),
        "prometheus": ("127.0.0.1", 9090, 9090),
        "alertmanager": ("127.0.0.1", 9093, 9093),
    }
    for name, port in expected.items():
        assert compose_file.published(services[name]) == [port], name
    for name, service in services.items():
        for host_ip, published, target in compose_file.published(service):
            assert 1883 not in (published, target), f"{name} publishes the plaintext listener"
            assert 8884 not in (published, target), f"{name} publishes the services listener"
            if (name, published) != ("mosquitto", 8883):
                assert host_ip == "127.0.0.1", f"{name}:{published} is published beyond loopback"


# --- environment contract ---------------------------------------------------------------------


def _setting_names(cls: type[ServiceSettings]) -> set[str]:
    """Every variable ``cls`` reads, derived from the model (nested groups included)."""
    return {s.env for s in settings_of(cls) if not s.group}


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_env_names_are_settings_fields(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    """Each variable a Python service is given is one its settings model reads (a misspelt or
    removed name would be silently ignored by pydantic-settings)."""
    names = _setting_names(SERVICE_SETTINGS[service_name])
    env = compose_file.environment(services[service_name])
    assert env, service_name
    for key in env:
        assert key in names, (
            f"{service_name}: no setting of {SERVICE_SETTINGS[service_name]} reads {key}"
        )


def test_every_telemetry_variable_is_read_by_someone(services: dict[str, dict[str, Any]]) -> None:
    """Every TELEMETRY_* variable compose sets, in any service, is a name some settings model
    reads, or one the script that service runs reads (preflight's profile and secrets, the
    InfluxDB init's database name)."""
    models = set().union(*(_setting_names(cls) for cls in set(SERVICE_SETTINGS.values())))
    for name, service in services.items():
        for key in compose_file.environment(service):
            if not key.startswith("TELEMETRY_") or key in models:
                continue
            script = SCRIPT_VARIABLES.get(name)
            assert script is not None, f"{name}: {key} is read by no settings model"
            assert re.search(rf"\b{key}\b", script.read_text(encoding="utf-8")), (
                f"{name}: {key} is read neither by a settings model nor by {script.name}"
            )


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_env_values_are_accepted(
    services: dict[str, dict[str, Any]], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no variable set (the compose defaults), the service's settings class accepts its
    environment, and the nested groups carry the values given (strings parsed to types)."""
    cls = SERVICE_SETTINGS[service_name]
    prefix = str(cls.model_config.get("env_prefix", ""))
    env = compose_file.environment(services[service_name])
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    groups: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        top, _, nested = key.removeprefix(prefix).lower().partition("__")
        if nested:
            groups.setdefault(top, {})[nested] = value
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
    """The bridge and the API present their own certificates on the services listener (8884) and
    each gateway the certificate named after its id on the gateway listener (8883; CN = MQTT
    username = client id, which the broker ACL fences); pki-init issues every gateway's
    certificate, renders both listeners and hands all client keys to the services' user."""
    from provisioning.pki import API_IDENTITY, BRIDGE_IDENTITY

    identities: dict[str, tuple[type[ServiceSettings], str]] = {
        "bridge": (BridgeSettings, BRIDGE_IDENTITY),
        "api": (ApiSettings, API_IDENTITY),
    }
    for name, gw_id in GATEWAYS.items():
        assert (
            compose_file.environment(services[name])[env_name(EdgeSettings, "gateway_id")] == gw_id
        )
        identities[name] = (EdgeSettings, gw_id)
    script = "\n".join(services["pki-init"]["command"])
    issued = re.search(r"for gw in ([^;]+); do", script)
    handed = re.search(r"for name in ([^;]+); do", script)
    assert issued is not None
    assert handed is not None
    assert 'telemetry-stack pki gateway "$${gw}" --dir /pki' in script
    assert set(issued[1].split()) == set(GATEWAYS.values())
    # pki init issues the bridge's and the API's certificates; the gateways' are issued above.
    assert set(handed[1].split()) == {BRIDGE_IDENTITY, API_IDENTITY, *GATEWAYS.values()}
    assert "--host mosquitto" in script  # the broker certificate names the host clients dial
    assert "--tls-port 8883 --service-port 8884" in script
    for name, (cls, identity) in identities.items():
        env = compose_file.environment(services[name])
        expected = {
            "host": "mosquitto",
            "port": "8883" if cls is EdgeSettings else "8884",
            "ca_file": "/pki/ca.crt",
            "cert_file": f"/pki/{identity}.crt",
            "key_file": f"/pki/{identity}.key",
        }
        for field, value in expected.items():
            assert env[env_name(cls, "mqtt", field)] == value, (name, field)
        assert "pki:/pki:ro" in services[name]["volumes"], name
    assert "pki:/pki:ro" in services["mosquitto"]["volumes"]
    assert "pki:/pki" in services["pki-init"]["volumes"]
    outboxes = {v for name in GATEWAYS for v in services[name]["volumes"] if "outbox" in v}
    assert len(outboxes) == len(GATEWAYS), "each gateway needs an outbox volume of its own"


def test_one_topic_root(services: dict[str, dict[str, Any]]) -> None:
    """The broker ACL (rendered by pki-init), every service and the live-feed subscriber use
    the same topic root."""
    script = "\n".join(services["pki-init"]["command"])
    roots = set(re.findall(r"--topic-root (\S+)", script))
    for name in SERVICE_SETTINGS:
        roots |= {
            v
            for k, v in compose_file.environment(services[name]).items()
            if k.endswith("_TOPIC_ROOT")
        }
    assert roots == {"chargers/v1"}


def test_every_variable_has_a_default() -> None:
    """`docker compose up` works without a .env file: each ${VAR} has a ``:-`` default."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    found = list(compose_file.VARIABLE.finditer(text))
    assert found
    for match in found:
        assert match["sep"] == ":-", match[0]
        assert match["default"], match[0]
    assert not re.search(r"(?<!\$)\$(?![{$])", text), "a bare $VAR or unescaped $"


def test_env_example_lists_every_variable() -> None:
    """.env.example documents every variable the compose file reads (the image name aside),
    uses each, and docker/gen-env.sh writes exactly the same names."""
    used = {
        m["name"] for m in compose_file.VARIABLE.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))
    }
    example = compose_file.env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert set(example) == used - {"TELEMETRY_IMAGE"}
    assert set(compose_file.gen_env()) == set(example)


# --- secrets ----------------------------------------------------------------------------------


def _compose_secret_values(services: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """For each secret variable, the defaults the compose file gives it, wherever it is used."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    out: dict[str, set[str]] = {}
    for match in compose_file.VARIABLE.finditer(text):
        out.setdefault(match["name"], set()).add(match["default"])
    return {name: out.get(name, set()) for name in SECRETS}


def test_every_secret_default_is_a_placeholder(services: dict[str, dict[str, Any]]) -> None:
    """Each secret has one default wherever it is used, the default is marked as a placeholder,
    and preflight receives every secret with that same default (so what it checks is what the
    services get)."""
    defaults = _compose_secret_values(services)
    checked = compose_file.environment(services["preflight"])
    for name, values in defaults.items():
        assert len(values) == 1, f"{name} has several defaults: {values}"
        (value,) = values
        assert _PLACEHOLDER in value, name
        assert checked[name] == value, name
    assert set(checked) == SECRETS | {"TELEMETRY_PROFILE"}
    script = services["preflight"]["command"]
    assert script[-1] in {v.split(":")[1] for v in services["preflight"]["volumes"]}
    assert f"./docker/{PREFLIGHT.name}:{script[-1]}:ro" in services["preflight"]["volumes"]


def test_no_placeholder_secret_outside_dev(services: dict[str, dict[str, Any]]) -> None:
    """preflight lets the compose defaults through in the dev profile (the default), refuses
    them in any other profile, naming every placeholder variable but never printing a value."""
    dev = compose_file.environment(services["preflight"])
    assert dev["TELEMETRY_PROFILE"] == "dev"
    accepted = compose_file.run_preflight(dev)
    assert accepted.returncode == 0, accepted.stderr
    assert "placeholder" in accepted.stdout

    refused = compose_file.run_preflight({**dev, "TELEMETRY_PROFILE": "production"})
    assert refused.returncode == 1
    for name in SECRETS:
        assert name in refused.stderr, name
        assert dev[name] not in refused.stderr + refused.stdout, f"{name}'s value was printed"


def test_env_example_is_refused_until_edited(services: dict[str, dict[str, Any]]) -> None:
    """Copying .env.example unchanged does not start a production stack: its profile is not
    dev and its secrets are placeholders."""
    example = compose_file.env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert example["TELEMETRY_PROFILE"] != "dev"
    env = compose_file.environment(services["preflight"], example)
    refused = compose_file.run_preflight(env)
    assert refused.returncode == 1
    assert all(name in refused.stderr for name in SECRETS)


def test_generated_env_starts_a_production_stack(services: dict[str, dict[str, Any]]) -> None:
    """docker/gen-env.sh writes a production .env whose secrets preflight accepts, different
    on every run and from each other."""
    runs = [compose_file.gen_env(), compose_file.gen_env()]
    for generated in runs:
        assert generated["TELEMETRY_PROFILE"] == "production"
        values = [generated[name] for name in SECRETS]
        assert len(set(values)) == len(values)
        assert all(re.fullmatch(r"[A-Za-z0-9]{32}", v) for v in values)
        accepted = compose_file.run_preflight(
            compose_file.environment(services["preflight"], generated)
        )
        assert accepted.returncode == 0, accepted.stderr
    assert all(runs[0][name] != runs[1][name] for name in SECRETS)


#: Real-looking secrets, all distinct: preflight accepts them in the production profile.
GOOD_SECRETS = {name: f"{name.lower().replace('_', '-')}-0123456789" for name in SECRETS}


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("TELEMETRY_ADMIN_KEY", GOOD_SECRETS["TELEMETRY_INGEST_KEY"], "must differ"),
        ("INFLUXDB_TOKEN", "short-token", "INFLUXDB_TOKEN"),
        ("GRAFANA_ADMIN_PASSWORD", "a-real-looking-CHANGE-ME-one", "GRAFANA_ADMIN_PASSWORD"),
        ("TELEMETRY_READ_KEY", "", "TELEMETRY_READ_KEY"),
    ],
)
def test_preflight_refusals(variable: str, value: str, reason: str) -> None:
    """Outside dev, a key shared by two roles, a short secret, a 'change-me' in any case or an
    empty secret each stop the stack, with the reason."""
    production = {**GOOD_SECRETS, "TELEMETRY_PROFILE": "production"}
    assert compose_file.run_preflight(production).returncode == 0
    refused = compose_file.run_preflight({**production, variable: value})
    assert refused.returncode == 1
    assert reason in refused.stderr


# --- live feed, Prometheus, InfluxDB init, Grafana ----------------------------------------------


def test_live_feed_reads_the_loopback_listener(services: dict[str, dict[str, Any]]) -> None:
    """live-feed subscribes on the broker's loopback plaintext listener (it shares the broker's
    network namespace, so nothing is published) to the live and dead-letter topics, which the
    rendered ACL lets anonymous clients read; it runs as the broker's unprivileged user."""
    from provisioning.broker_config import render_acl

    feed = services["live-feed"]
    assert feed["network_mode"] == "service:mosquitto"
    assert "ports" not in feed
    assert feed["user"] == "1883:1883"
    topics = Topics("chargers/v1")
    live = topics.live("x").rsplit("/", 1)[0] + "/#"
    dead = topics.deadletter("x").rsplit("/", 1)[0] + "/#"
    command = feed["command"]
    assert command[0] == "mosquitto_sub"
    port = command[command.index("-p") + 1]
    assert command[command.index("-h") + 1] == "127.0.0.1"
    subscribed = {command[i + 1] for i, arg in enumerate(command) if arg == "-t"}
    assert subscribed == {live, dead}
    assert f"--local-port {port}" in "\n".join(services["pki-init"]["command"])
    acl = render_acl("chargers/v1")
    anonymous = acl.split("\npattern ", 1)[0]
    assert f"topic read {live}" in anonymous
    assert f"topic read {dead}" in anonymous


def test_prometheus_scrapes_the_services(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus scrapes the bridge, the API, the rollup and sessions jobs and every gateway on
    the ports their settings serve metrics on (bound beyond loopback inside the compose network,
    never published), and labels each gateway's series with its gateway id."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert set(jobs) == {
        "telemetry-bridge",
        "telemetry-api",
        "telemetry-rollups",
        "telemetry-sessions",
        "telemetry-edge",
    }

    def targets(job: str) -> set[str]:
        return {t for sc in jobs[job] for t in sc["targets"]}

    bridge = compose_file.environment(services["bridge"])
    api = compose_file.environment(services["api"])
    assert bridge[env_name(BridgeSettings, "http_host")] == "0.0.0.0"
    bridge_port = bridge[env_name(BridgeSettings, "http_port")]
    assert targets("telemetry-bridge") == {f"bridge:{bridge_port}"}
    assert targets("telemetry-api") == {f"api:{api[env_name(ApiSettings, 'port')]}"}
    rollups = compose_file.environment(services["rollups"])
    assert rollups[env_name(RollupsSettings, "http_host")] == "0.0.0.0"
    rollups_port = rollups[env_name(RollupsSettings, "http_port")]
    assert targets("telemetry-rollups") == {f"rollups:{rollups_port}"}
    assert "ports" not in services["rollups"]
    sessions = compose_file.environment(services["sessions"])
    assert sessions[env_name(SessionsSettings, "http_host")] == "0.0.0.0"
    sessions_port = sessions[env_name(SessionsSettings, "http_port")]
    assert targets("telemetry-sessions") == {f"sessions:{sessions_port}"}
    assert "ports" not in services["sessions"]
    edge = {}
    for sc in jobs["telemetry-edge"]:
        (target,) = sc["targets"]
        edge[target] = sc["labels"]["gateway"]
    want = {}
    for name, gw_id in GATEWAYS.items():
        env = compose_file.environment(services[name])
        assert env[env_name(EdgeSettings, "metrics_host")] == "0.0.0.0"
        want[f"{name}:{env[env_name(EdgeSettings, 'metrics_port')]}"] = gw_id
        assert "ports" not in services[name]
    assert edge == want
    assert "ports" not in services["bridge"]
    assert (
        f"./docker/prometheus/{PROMETHEUS_CONFIG.name}:/etc/prometheus/prometheus.yml:ro"
        in (services["prometheus"]["volumes"])
    )
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_prometheus_alerts_reach_the_webhook_receiver(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus loads the shipped rules (mounted where rule_files says) and sends alerts to the
    alertmanager service on the port it listens on; Alertmanager's receivers post to the
    alert-webhook service on the port and path its script serves, with resolved notices; the
    receiver is the shipped script, mounted where its command runs it."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (rules,) = config["rule_files"]
    mount = f"./docker/prometheus/{PROMETHEUS_RULES.name}:{rules}:ro"
    assert mount in services["prometheus"]["volumes"]
    (am,) = config["alerting"]["alertmanagers"]
    (static,) = am["static_configs"]
    assert static["targets"] == ["alertmanager:9093"]
    assert compose_file.published(services["alertmanager"]) == [("127.0.0.1", 9093, 9093)]

    am_config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    command = services["alertmanager"]["command"]
    (flag,) = [c for c in command if c.startswith("--config.file=")]
    target = flag.removeprefix("--config.file=")
    assert (
        f"./docker/alertmanager/{ALERTMANAGER_CONFIG.name}:{target}:ro"
        in (services["alertmanager"]["volumes"])
    )
    receivers = {r["name"]: r for r in am_config["receivers"]}
    assert am_config["route"]["receiver"] in receivers
    for route in am_config["route"].get("routes", []):
        assert route["receiver"] in receivers
    hook = services["alert-webhook"]
    argv = hook["command"]
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    for receiver in receivers.values():
        for webhook in receiver["webhook_configs"]:
            assert webhook["url"] == f"http://alert-webhook:{port}/alerts"
            assert webhook["send_resolved"] is True
    script = argv[argv.index("python") + 1]
    assert f"./docker/alertmanager/{WEBHOOK_RECEIVER.name}:{script}:ro" in hook["volumes"]
    assert "ports" not in hook


def test_influxdb_init_and_grafana_datasources(services: dict[str, dict[str, Any]]) -> None:
    """InfluxDB maps the InfluxQL database `telemetry` onto its `telemetry` bucket with an
    executable init script; Grafana's InfluxDB datasource queries that database with InfluxQL
    and the same token in an `Authorization: Token` header, and its Prometheus datasource
    reaches the prometheus service; both have the fixed uids the dashboards use."""
    influx = compose_file.environment(services["influxdb"])
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"
    assert influx["TELEMETRY_INFLUXQL_DATABASE"] == InfluxSettings().database
    assert (
        "./docker/influxdb-init:/docker-entrypoint-initdb.d:ro" in services["influxdb"]["volumes"]
    )
    script = ROOT / "docker" / "influxdb-init" / "10-dbrp.sh"
    assert os.access(script, os.X_OK), "the image runs only executable init scripts"
    assert "influx v1 dbrp create" in script.read_text(encoding="utf-8")

    ds_dir = PROVISIONING / "datasources"
    (ds,) = yaml.safe_load((ds_dir / "influxdb.yml").read_text(encoding="utf-8"))["datasources"]
    assert ds["uid"] == INFLUX_UID
    assert ds["type"] == "influxdb"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["dbName"] == "telemetry"
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    token = compose_file.environment(services["grafana"])["INFLUXDB_TOKEN"]
    assert token == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    for name, cls in (("bridge", BridgeSettings), ("api", ApiSettings)):
        assert (
            token == compose_file.environment(services[name])[env_name(cls, "influx", "token")]
        ), name

    (prom,) = yaml.safe_load((ds_dir / "prometheus.yml").read_text(encoding="utf-8"))["datasources"]
    assert prom["uid"] == PROMETHEUS_UID
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]


def test_dashboards_are_provisioned(services: dict[str, dict[str, Any]]) -> None:
    """The provider loads the folder compose mounts the dashboards into; the three dashboards
    are there with distinct uids, and Grafana's home dashboard is one of them."""
    (provider,) = yaml.safe_load(
        (PROVISIONING / "dashboards" / "charger-telemetry.yml").read_text(encoding="utf-8")
    )["providers"]
    path = provider["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]
    dashboards = load_dashboards()
    assert set(dashboards) == {"fleet-overview.json", "charger-detail.json", "pipeline-health.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    home = compose_file.environment(services["grafana"])[
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home.startswith(path + "/")
    assert home.removeprefix(path + "/") in dashboards


def test_dashboards_use_only_the_provisioned_datasources() -> None:
    """Every panel, query and template variable of every dashboard names a provisioned
    datasource by its fixed uid (a dashboard that relied on 'the default datasource' or a uid
    from someone's Grafana would show 'datasource not found')."""
    provisioned = {INFLUX_UID: "influxdb", PROMETHEUS_UID: "prometheus"}
    for name, dashboard in load_dashboards().items():
        variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
        sources = [(f"variable {v['name']}", v["datasource"]) for v in variables]
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            sources.append((f"panel {panel['title']!r}", panel["datasource"]))
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            sources += [
                (f"{panel['title']!r} {t['refId']}", t["datasource"]) for t in panel["targets"]
            ]
        for where, ds in sources:
            assert isinstance(ds, dict), f"{name}: {where} names no datasource uid"
            assert ds.get("uid") in provisioned, f"{name}: {where} uses {ds}"
            assert ds.get("type") == provisioned[ds["uid"]], f"{name}: {where}"


def test_dashboard_prometheus_queries_name_exported_metrics(tmp_path: Path) -> None:
    """Every metric a Prometheus panel queries is one the bridge, the edge agent (or the API)
    exports, with
    prometheus_client's suffixes (_total, _bucket): renaming a metric breaks this test, not a
    dashboard in production."""
    from processor.metrics import Metrics

    exported = _exported(Metrics().registry) | _edge_metrics(tmp_path)
    try:
        from query_api.metrics import ApiMetrics
    except ModuleNotFoundError:
        pass
    else:
        exported |= _exported(ApiMetrics().registry)
    exported |= {"up"}  # Prometheus's own per-target series
    found = 0
    for name, dashboard in load_dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target["datasource"]["uid"] != PROMETHEUS_UID:
                    continue
                expr = re.sub(r"\[[^]]*\]|\{[^}]*\}|\"[^\"]*\"", "", target["expr"])
                names = {
                    n
                    for n in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr)
                    if n.startswith("telemetry_") or n == "up"
                }
                assert names, f"{name}: {panel['title']}: no metric in {target['expr']!r}"
                for metric in names:
                    assert metric in exported, f"{name}: {panel['title']}: {metric} not exported"
                found += 1
    assert found >= 5


# --- image ------------------------------------------------------------------------------------


def test_image_holds_every_package_and_the_broker_templates() -> None:
    """The Dockerfile is multi-stage on python:3.11-slim, ends as a non-root user, and copies
    (and .dockerignore lets through) every package pyproject installs plus mosquitto/, which
    provisioning reads its broker templates from."""
    from provisioning.broker_config import TEMPLATE_DIR

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


def test_the_api_lists_the_bridges_bindings_file(services: dict[str, dict[str, Any]]) -> None:
    """The API mounts the bridge's bindings file and reads it (GET /v1/bindings lists it): an
    operator of the compose stack does not see an empty list while the file binds chargers."""
    mounts: dict[str, str] = {}
    for name, setting in (
        ("bridge", "TELEMETRY_BRIDGE_BINDINGS_FILE"),
        ("api", "TELEMETRY_API_BINDINGS_FILE"),
    ):
        path = compose_file.environment(services[name])[setting]
        sources = [
            v.split(":")[0] for v in services[name].get("volumes", []) if v.split(":")[1] == path
        ]
        assert len(sources) == 1, (name, path)
        mounts[name] = sources[0]
    assert mounts["api"] == mounts["bridge"] == "./docker/bindings.json"
