"""The local stack of ``telemetry-stack up``: which services run, how, and ``DIR/stack.json``.

Services start in order (mosquitto, influxd, bridge, api, gateway-1..N) and stop in reverse.
Everything needed to stop or restart a service later (pid, argv, extra environment, log file,
readiness check) is written to ``stack.json``, so ``down``/``restart``/``status`` work from
another shell. Processes are only ever stopped by the PID recorded there, after checking that
the PID still runs the recorded command.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from provisioning import pki as pki_mod
from provisioning.bridge_session import bridge_names
from telemetry_common.errors import ConfigError, TelemetryError
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack import servers

STATE_FILE: Final = "stack.json"
DATABASE: Final = "telemetry"
READY_TIMEOUT_S: Final = 60.0
#: A service without a readiness endpoint counts as ready once it stayed up this long.
SETTLE_S: Final = 1.5


class StackError(TelemetryError):
    """The stack cannot do what was asked (carries the state directory)."""

    def __init__(self, state_dir: Path, problem: str) -> None:
        super().__init__(problem)
        self.state_dir = state_dir


@dataclass
class ServiceRecord:
    """One service in stack.json."""

    pid: int | None
    argv: list[str]
    log_file: str
    #: Extra environment on top of the caller's (the TELEMETRY_* variables).
    env: dict[str, str] = field(default_factory=dict)
    #: {"tcp": [[host, port], ...]} | {"http": url, "status": code} | {"settle_s": seconds}
    ready: dict[str, Any] = field(default_factory=dict)


# --- state file -----------------------------------------------------------------------------


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: Path) -> dict[str, Any]:
    path = state_path(state_dir)
    if not path.is_file():
        raise StackError(state_dir, f"no {path}: start the stack with `telemetry-stack up`")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write stack.json atomically, mode 0600 (it holds the API keys)."""
    path = state_path(state_dir)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def records(state: dict[str, Any]) -> dict[str, ServiceRecord]:
    """The services of a state, in start order."""
    return {name: ServiceRecord(**raw) for name, raw in state.get("services", {}).items()}


def set_record(state: dict[str, Any], name: str, record: ServiceRecord) -> None:
    state.setdefault("services", {})[name] = asdict(record)


# --- processes ------------------------------------------------------------------------------


def pid_runs(pid: int | None, argv: list[str]) -> bool:
    """True if ``pid`` is alive and still runs ``argv`` (guards against PID reuse)."""
    if pid is None or not servers.pid_alive(pid):
        return False
    cmdline = servers.pid_cmdline(pid)
    if not cmdline:
        return True  # no /proc: trust the pid
    # A console script runs as `python /path/bin/telemetry-api`: match the program anywhere.
    return argv[0] in cmdline[:2] or Path(argv[0]).name in {Path(c).name for c in cmdline[:2]}


def ready_check(record: ServiceRecord, started: float) -> Callable[[], bool]:
    ready = record.ready
    if "tcp" in ready:
        targets = [(str(h), int(p)) for h, p in ready["tcp"]]
        return lambda: all(servers.port_open(h, p) for h, p in targets)
    if "http" in ready:
        url, status = str(ready["http"]), int(ready.get("status", 200))
        return lambda: servers.http_status(url) == status
    settle = float(ready.get("settle_s", SETTLE_S))
    return lambda: time.monotonic() - started >= settle


def launch(
    name: str,
    record: ServiceRecord,
    timeout: float = READY_TIMEOUT_S,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Start a recorded service and wait until it is ready; its new pid. ``record.pid`` is set
    as soon as the process exists, then ``on_started`` runs (to save the state early)."""
    proc = servers.ManagedProcess(
        name,
        record.argv,
        env={**os.environ, **record.env},
        log_file=Path(record.log_file),
    )
    proc.start()
    assert proc.pid is not None
    record.pid = proc.pid
    try:
        if on_started is not None:
            on_started()
        proc.wait_ready(ready_check(record, time.monotonic()), timeout)
    except BaseException:
        proc.stop()
        raise
    return proc.pid


def stop_service(name: str, record: ServiceRecord, timeout: float = 15.0) -> str:
    """Stop one service by its recorded pid; a sentence saying what happened."""
    pid = record.pid
    if pid is None or not servers.pid_alive(pid):
        record.pid = None
        return f"{name}: not running"
    if not pid_runs(pid, record.argv):
        record.pid = None
        return f"{name}: pid {pid} now runs another program; left alone"
    servers.stop_pid(pid, timeout)
    record.pid = None
    return f"stopped {name} (pid {pid})"


def program(name: str) -> str:
    """A console script of this project: next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(name, "command not found; install the project (`make bootstrap`)")


# --- bringing the stack up ------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    state_dir: Path
    gateways: int = 1
    chargers: int = 2
    interval_s: float = 1.0
    topic_root: str = DEFAULT_ROOT


def _distinct_ports(n: int) -> Iterator[int]:
    seen: set[int] = set()
    while len(seen) < n:
        port = servers.free_port()
        if port not in seen:
            seen.add(port)
            yield port


def running_services(state_dir: Path) -> list[str]:
    try:
        state = load_state(state_dir)
    except StackError:
        return []
    return [n for n, r in records(state).items() if pid_runs(r.pid, r.argv)]


def influx_query(url: str, statement: str) -> None:
    body = urllib.parse.urlencode({"q": statement}).encode()
    req = urllib.request.Request(f"{url}/query", data=body, method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (our own URL)
        answer = json.loads(resp.read())
    errors = [r["error"] for r in answer.get("results", []) if "error" in r]
    if errors:
        raise StackError(Path(), f"InfluxQL {statement!r} failed: {errors}")


def up(opts: UpOptions, echo: Callable[[str], None]) -> dict[str, Any]:
    """Start every service (each ready before the next); returns the state written to
    stack.json. On any failure, what was started is stopped again and the error raised."""
    state_dir = opts.state_dir.resolve()
    if opts.gateways < 0 or opts.chargers < 1:
        raise StackError(state_dir, "--gateways must be >= 0 and --chargers >= 1")
    if already := running_services(state_dir):
        raise StackError(
            state_dir,
            f"a stack is already running in {state_dir} ({', '.join(already)}): "
            "`telemetry-stack down` first",
        )
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pki = pki_mod.init(state_dir / "pki")
    gateways = {
        f"gw-{i}": pki_mod.issue_gateway(pki.dir, f"gw-{i}") for i in range(1, opts.gateways + 1)
    }
    bridge_cert, bridge_key = pki.client_paths(pki_mod.BRIDGE_IDENTITY)
    api_cert, api_key = pki.client_paths(pki_mod.API_IDENTITY)
    tls_port, local_port, influx_port, api_port, bridge_port = _distinct_ports(5)
    influx_url = f"http://127.0.0.1:{influx_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    keys = {role: secrets.token_urlsafe(24) for role in ("read", "ingest", "admin")}
    state: dict[str, Any] = {
        "topic_root": opts.topic_root,
        "mqtt": {
            "host": "127.0.0.1",
            "tls_port": tls_port,
            "ca_file": str(pki.ca_file),
            "local_port": local_port,
        },
        "gateways": {
            gw: {"cert_file": str(c), "key_file": str(k)} for gw, (c, k) in gateways.items()
        },
        "influx": {"url": influx_url, "database": DATABASE},
        "api": {"url": api_url, "keys": keys},
        "bridge": {"url": f"http://127.0.0.1:{bridge_port}"},
        "state_dir": str(state_dir),
        "pki_dir": str(pki.dir),
        "services": {},
    }

    def record_and_save(name: str, rec: ServiceRecord) -> None:
        set_record(state, name, rec)
        save_state(state_dir, state)
        echo(f"{name} ready (pid {rec.pid})")

    try:
        mq = servers.start_mosquitto(
            state_dir / "mosquitto",
            pki,
            tls_port,
            local_port,
            opts.topic_root,
            log_file=logs / "mosquitto.log",
        )
        record_and_save(
            "mosquitto",
            ServiceRecord(
                mq.pid,
                mq.argv,
                str(mq.log_file),
                ready={"tcp": [["127.0.0.1", tls_port], ["127.0.0.1", local_port]]},
            ),
        )
        ix = servers.start_influxd(
            state_dir / "influxd", influx_port, log_file=logs / "influxd.log"
        )
        record_and_save(
            "influxd",
            ServiceRecord(
                ix.pid,
                ix.argv,
                str(ix.log_file),
                ready={"http": f"{influx_url}/ping", "status": 204},
            ),
        )
        influx_query(influx_url, f'CREATE DATABASE "{DATABASE}"')

        mqtt_env = {
            "MQTT__HOST": "127.0.0.1",
            "MQTT__PORT": str(tls_port),
            "MQTT__CA_FILE": str(pki.ca_file),
        }
        bridge_client_id, share_group = bridge_names(state_dir)
        bridge_env = {
            "TELEMETRY_BRIDGE_TOPIC_ROOT": opts.topic_root,
            **{f"TELEMETRY_BRIDGE_{k}": v for k, v in mqtt_env.items()},
            "TELEMETRY_BRIDGE_MQTT__CERT_FILE": str(bridge_cert),
            "TELEMETRY_BRIDGE_MQTT__KEY_FILE": str(bridge_key),
            "TELEMETRY_BRIDGE_INFLUX__URL": influx_url,
            "TELEMETRY_BRIDGE_INFLUX__DATABASE": DATABASE,
            "TELEMETRY_BRIDGE_INFLUX__API": "v1",
            "TELEMETRY_BRIDGE_CLIENT_ID": bridge_client_id,
            "TELEMETRY_BRIDGE_SHARE_GROUP": share_group,
            "TELEMETRY_BRIDGE_HTTP_PORT": str(bridge_port),
        }
        bridge_url = f"http://127.0.0.1:{bridge_port}"
        planned: list[tuple[str, ServiceRecord]] = [
            (
                "bridge",
                ServiceRecord(
                    None,
                    [program("telemetry-bridge")],
                    "",
                    bridge_env,
                    ready={"http": f"{bridge_url}/readyz", "status": 200},
                ),
            ),
            (
                "api",
                ServiceRecord(
                    None,
                    [program("telemetry-api")],
                    "",
                    {
                        "TELEMETRY_API_HOST": "127.0.0.1",
                        "TELEMETRY_API_PORT": str(api_port),
                        "TELEMETRY_API_INFLUX__URL": influx_url,
                        "TELEMETRY_API_INFLUX__DATABASE": DATABASE,
                        "TELEMETRY_API_KEYS": json.dumps(keys),
                        "TELEMETRY_API_TOPIC_ROOT": opts.topic_root,
                        # The live mirror and HTTP ingest (certificate CN telemetry-api).
                        **{f"TELEMETRY_API_{k}": v for k, v in mqtt_env.items()},
                        "TELEMETRY_API_MQTT__CERT_FILE": str(api_cert),
                        "TELEMETRY_API_MQTT__KEY_FILE": str(api_key),
                        "TELEMETRY_API_INGEST_SEQ_FILE": str(state_dir / "api" / "ingest-seq.json"),
                        "TELEMETRY_API_BRIDGE_URLS": json.dumps([bridge_url]),
                    },
                    ready={"http": f"{api_url}/healthz", "status": 200},
                ),
            ),
        ]
        outboxes = state_dir / "edge"
        outboxes.mkdir(exist_ok=True)
        for i, (gw, (cert, key)) in enumerate(gateways.items(), start=1):
            env = {
                "TELEMETRY_EDGE_GATEWAY_ID": gw,
                "TELEMETRY_EDGE_OUTBOX_PATH": str(outboxes / f"{gw}.sqlite3"),
                **{f"TELEMETRY_EDGE_{k}": v for k, v in mqtt_env.items()},
                "TELEMETRY_EDGE_MQTT__CERT_FILE": str(cert),
                "TELEMETRY_EDGE_MQTT__KEY_FILE": str(key),
                "TELEMETRY_EDGE_SIM__CHARGERS": str(opts.chargers),
                "TELEMETRY_EDGE_SIM__INTERVAL_S": str(opts.interval_s),
                "TELEMETRY_EDGE_TOPIC_ROOT": opts.topic_root,
            }
            argv = [program("edge-agent"), "run", "--source", "sim"]
            planned.append((f"gateway-{i}", ServiceRecord(None, argv, "", env)))
        for name, rec in planned:
            rec.log_file = str(logs / f"{name}.log")
            launch(name, rec)
            record_and_save(name, rec)
    except BaseException:
        echo("start failed; stopping what was started")
        for line in down(state_dir, state):
            echo(line)
        raise
    return state


def down(state_dir: Path, state: dict[str, Any] | None = None) -> list[str]:
    """Stop every recorded service in reverse start order; one line per service."""
    state_dir = Path(state_dir)
    if state is None:
        state = load_state(state_dir)
    lines = []
    recs = records(state)
    for name in reversed(list(recs)):
        lines.append(stop_service(name, recs[name]))
        set_record(state, name, recs[name])
    if state_path(state_dir).parent.is_dir():
        save_state(state_dir, state)
    return lines


def restart(state_dir: Path, name: str) -> int:
    """Stop one service by its recorded pid and start it again the same way; its new pid."""
    state = load_state(state_dir)
    recs = records(state)
    if name not in recs:
        raise StackError(state_dir, f"no service {name!r}; services: {', '.join(recs)}")
    rec = recs[name]

    def save() -> None:
        set_record(state, name, rec)
        save_state(state_dir, state)

    stop_service(name, rec)
    save()
    return launch(name, rec, on_started=save)


def status(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Per service: pid, running, ready (its readiness check passes now), log file."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in records(load_state(state_dir)).items():
        running = pid_runs(rec.pid, rec.argv)
        check = ready_check(rec, started=time.monotonic() - SETTLE_S)
        out[name] = {
            "pid": rec.pid if running else None,
            "running": running,
            "ready": running and check(),
            "log_file": rec.log_file,
        }
    return out
