"""``telemetry-stack up``: the local stack, brought up as a list of steps.

Services start in order (mosquitto, influxd, bridge, api, rollups, sessions, gateway-1..N), each
ready before the next, and ``DIR/stack.json`` (:mod:`telemetry_stack.state`) is written as each one
is up. On any failure what was started is stopped again (:func:`telemetry_stack.supervisor.down`).
Each service's environment is derived from its settings model
(:func:`telemetry_common.settings.env_for`), never typed by hand.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from provisioning import pki as pki_mod
from provisioning.bridge_session import bridge_names
from query_api.settings import ApiSettings
from rollups.settings import RollupsSettings
from sessions.settings import SessionsSettings
from telemetry_common.settings import env_for
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack import servers
from telemetry_stack.state import ServiceRecord, StackError, save_state, set_record
from telemetry_stack.supervisor import down, launch, program, running_services

DATABASE: Final = "telemetry"
HOST: Final = "127.0.0.1"
API_ROLES: Final = ("read", "ingest", "admin")


@dataclass(frozen=True)
class UpOptions:
    state_dir: Path
    gateways: int = 1
    chargers: int = 2
    interval_s: float = 1.0
    topic_root: str = DEFAULT_ROOT


@dataclass(frozen=True)
class Ports:
    """The loopback ports of one stack, distinct and free when picked."""

    tls: int
    local: int
    influx: int
    api: int
    bridge: int
    service: int
    #: The rollup job's /metrics and /healthz (0: off).
    rollups: int = 0
    #: The sessions job's /metrics and /healthz (0: off).
    sessions: int = 0

    @classmethod
    def pick(cls) -> Ports:
        return cls(*_distinct_ports(8))


def _distinct_ports(n: int) -> Iterator[int]:
    seen: set[int] = set()
    while len(seen) < n:
        port = servers.free_port()
        if port not in seen:
            seen.add(port)
            yield port


@dataclass
class Startup:
    """The stack being brought up: its options, PKI and ports, and the state written so far."""

    opts: UpOptions
    dir: Path
    pki: pki_mod.Pki
    gateways: dict[str, tuple[Path, Path]]
    ports: Ports
    keys: dict[str, str]
    echo: Callable[[str], None]
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def influx_url(self) -> str:
        return f"http://{HOST}:{self.ports.influx}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports.api}"

    @property
    def bridge_url(self) -> str:
        return f"http://{HOST}:{self.ports.bridge}"

    def mqtt(self, identity: tuple[Path, Path], *, service: bool = False) -> dict[str, object]:
        """The ``mqtt`` settings group of a client with certificate and key ``identity``: on the
        gateway listener, or with ``service`` on the services listener."""
        cert, key = identity
        return {
            "host": HOST,
            "port": self.ports.service if service else self.ports.tls,
            "ca_file": self.pki.ca_file,
            "cert_file": cert,
            "key_file": key,
        }

    # -- what each service is told (pure: names derived from its settings model) ---------------
    def bridge_env(self, client_id: str, share_group: str) -> dict[str, str]:
        return env_for(
            BridgeSettings,
            topic_root=self.opts.topic_root,
            mqtt=self.mqtt(self.pki.client_paths(pki_mod.BRIDGE_IDENTITY), service=True),
            influx={"url": self.influx_url, "database": DATABASE, "api": "v1"},
            client_id=client_id,
            share_group=share_group,
            http_port=self.ports.bridge,
            # A dev launcher: `--gateways 0` scripts and HTTP ingest send for chargers no one
            # provisioned; a deployment binds them (docs/deploy.md).
            bindings="first-come",
        )

    def api_env(self) -> dict[str, str]:
        """The query API, with the live mirror and HTTP ingest (certificate CN telemetry-api)."""
        return env_for(
            ApiSettings,
            host=HOST,
            port=self.ports.api,
            influx={"url": self.influx_url, "database": DATABASE},
            keys=self.keys,
            topic_root=self.opts.topic_root,
            mqtt=self.mqtt(self.pki.client_paths(pki_mod.API_IDENTITY), service=True),
            ingest_seq_file=self.dir / "api" / "ingest-seq.json",
            pki_dir=self.pki.dir,  # POST /v1/enrollment signs gateways' CSRs with the stack's CA
            bridge_urls=[self.bridge_url],
            bindings="first-come",
        )

    def rollups_env(self) -> dict[str, str]:
        """The rollup job: the stack's database over the v1 API, retention managed."""
        return env_for(
            RollupsSettings,
            influx={"url": self.influx_url, "database": DATABASE, "api": "v1"},
            http_port=self.ports.rollups,
        )

    def sessions_env(self) -> dict[str, str]:
        """The sessions job: the stack's database over the v1 API."""
        return env_for(
            SessionsSettings,
            influx={"url": self.influx_url, "database": DATABASE, "api": "v1"},
            http_port=self.ports.sessions,
        )

    def gateway_env(self, gateway: str, identity: tuple[Path, Path]) -> dict[str, str]:
        """A simulating edge agent, its outbox under ``DIR/edge``."""
        return env_for(
            EdgeSettings,
            gateway_id=gateway,
            outbox_path=self.dir / "edge" / f"{gateway}.sqlite3",
            mqtt=self.mqtt(identity),
            sim={"chargers": self.opts.chargers, "interval_s": self.opts.interval_s},
            topic_root=self.opts.topic_root,
        )

    # -- recording what runs ------------------------------------------------------------------
    def record(self, name: str, rec: ServiceRecord) -> None:
        """Write a started service into stack.json."""
        set_record(self.state, name, rec)
        save_state(self.dir, self.state)
        self.echo(f"{name} ready (pid {rec.pid})")

    def launch(
        self, name: str, argv: list[str], env: dict[str, str], ready: dict[str, Any] | None = None
    ) -> None:
        """Start one of our own services, wait until it is ready (``ready``: see
        :class:`ServiceRecord`; none: once it stayed up a moment), record it."""
        rec = ServiceRecord(None, argv, str(self.logs / f"{name}.log"), env, ready=ready or {})
        launch(name, rec)
        self.record(name, rec)


# --- the steps --------------------------------------------------------------------------------


def up(opts: UpOptions, echo: Callable[[str], None]) -> dict[str, Any]:
    """Start every service (each ready before the next); returns the state written to
    stack.json. On any failure, what was started is stopped again and the error raised."""
    state_dir = opts.state_dir.resolve()
    check_can_start(opts, state_dir)
    stack = provision(opts, state_dir, echo)
    try:
        steps = (
            start_mosquitto,
            start_influxd,
            start_bridge,
            start_api,
            start_rollups,
            start_sessions,
        )
        for step in (*steps, start_gateways):
            step(stack)
    except BaseException:
        echo("start failed; stopping what was started")
        for line in down(state_dir, stack.state):
            echo(line)
        raise
    return stack.state


def check_can_start(opts: UpOptions, state_dir: Path) -> None:
    """Refuse bad counts, and a second stack in a state directory whose stack still runs."""
    if opts.gateways < 0 or opts.chargers < 1:
        raise StackError(state_dir, "--gateways must be >= 0 and --chargers >= 1")
    if already := running_services(state_dir):
        raise StackError(
            state_dir,
            f"a stack is already running in {state_dir} ({', '.join(already)}): "
            "`telemetry-stack down` first",
        )


def provision(opts: UpOptions, state_dir: Path, echo: Callable[[str], None]) -> Startup:
    """The PKI (kept if it exists) with a certificate per gateway, ports, API keys, and the
    state's addresses; nothing runs yet."""
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    pki = pki_mod.init(state_dir / "pki")
    gateways = {
        f"gw-{i}": pki_mod.issue_gateway(pki.dir, f"gw-{i}") for i in range(1, opts.gateways + 1)
    }
    stack = Startup(
        opts=opts,
        dir=state_dir,
        pki=pki,
        gateways=gateways,
        ports=Ports.pick(),
        keys={role: secrets.token_urlsafe(24) for role in API_ROLES},
        echo=echo,
    )
    stack.state = {
        "topic_root": opts.topic_root,
        "mqtt": {
            "host": HOST,
            "tls_port": stack.ports.tls,
            "ca_file": str(pki.ca_file),
            "local_port": stack.ports.local,
            "service_port": stack.ports.service,
        },
        "gateways": {
            gw: {"cert_file": str(c), "key_file": str(k)} for gw, (c, k) in gateways.items()
        },
        "influx": {"url": stack.influx_url, "database": DATABASE},
        "api": {"url": stack.api_url, "keys": stack.keys},
        "bridge": {"url": stack.bridge_url},
        "rollups": {"url": f"http://{HOST}:{stack.ports.rollups}"},
        "sessions": {"url": f"http://{HOST}:{stack.ports.sessions}"},
        "state_dir": str(state_dir),
        "pki_dir": str(pki.dir),
        "services": {},
    }
    return stack


def start_mosquitto(stack: Startup) -> None:
    ports = stack.ports
    proc = servers.start_mosquitto(
        stack.dir / "mosquitto",
        stack.pki,
        ports.tls,
        ports.local,
        stack.opts.topic_root,
        service_port=ports.service,
        log_file=stack.logs / "mosquitto.log",
    )
    ready = {"tcp": [[HOST, ports.tls], [HOST, ports.service], [HOST, ports.local]]}
    stack.record("mosquitto", ServiceRecord(proc.pid, proc.argv, str(proc.log_file), ready=ready))


def start_influxd(stack: Startup) -> None:
    """InfluxDB 1.x with the stack's database."""
    proc = servers.start_influxd(
        stack.dir / "influxd", stack.ports.influx, log_file=stack.logs / "influxd.log"
    )
    ready = {"http": f"{stack.influx_url}/ping", "status": 204}
    stack.record("influxd", ServiceRecord(proc.pid, proc.argv, str(proc.log_file), ready=ready))
    influx_query(stack.influx_url, f'CREATE DATABASE "{DATABASE}"')


def start_bridge(stack: Startup) -> None:
    env = stack.bridge_env(*bridge_names(stack.dir))
    ready = {"http": f"{stack.bridge_url}/readyz", "status": 200}
    stack.launch("bridge", [program("telemetry-bridge")], env, ready)


def start_api(stack: Startup) -> None:
    ready = {"http": f"{stack.api_url}/healthz", "status": 200}
    stack.launch("api", [program("telemetry-api")], stack.api_env(), ready)


def start_rollups(stack: Startup) -> None:
    """The rollup job (retention and rollups of the stack's database)."""
    ready = {"http": f"http://{HOST}:{stack.ports.rollups}/healthz", "status": 200}
    stack.launch("rollups", [program("telemetry-rollups")], stack.rollups_env(), ready)


def start_sessions(stack: Startup) -> None:
    """The sessions job (charging sessions from the stack's readings)."""
    ready = {"http": f"http://{HOST}:{stack.ports.sessions}/healthz", "status": 200}
    stack.launch("sessions", [program("telemetry-sessions")], stack.sessions_env(), ready)


def start_gateways(stack: Startup) -> None:
    """One simulating edge agent per gateway certificate."""
    (stack.dir / "edge").mkdir(exist_ok=True)
    argv = [program("edge-agent"), "run", "--source", "sim"]
    for i, (gw, identity) in enumerate(stack.gateways.items(), start=1):
        stack.launch(f"gateway-{i}", argv, stack.gateway_env(gw, identity))


def influx_query(url: str, statement: str) -> None:
    body = urllib.parse.urlencode({"q": statement}).encode()
    req = urllib.request.Request(f"{url}/query", data=body, method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (our own URL)
        answer = json.loads(resp.read())
    errors = [r["error"] for r in answer.get("results", []) if "error" in r]
    if errors:
        raise StackError(Path(), f"InfluxQL {statement!r} failed: {errors}")
