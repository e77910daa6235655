"""The servers a benchmark runs, in a temporary directory on free loopback ports.

Mosquitto (the project configuration: TLS with client certificates, plaintext loopback listener)
and InfluxDB 1.x start through ``telemetry_stack.servers``, the code ``telemetry-stack up`` and
the test fixtures use; the bridge, the API and helper processes are the real console scripts in
a :class:`ManagedProcess` each, with their environment derived from the settings models
(``env_for``). Every process is stopped by PID on the way out.

This is the only module of bench/ that imports ``telemetry_stack``.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from bench.harness.mqtt import Identity
from bridge.settings import BridgeSettings
from provisioning import pki as pki_mod
from query_api.settings import ApiSettings
from telemetry_common.settings import env_for
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack.servers import (
    ManagedProcess,
    free_port,
    port_open,
    start_influxd,
    start_mosquitto,
)

__all__ = ["ManagedProcess", "Stack", "free_port", "running_stack"]

REPO: Final = Path(__file__).resolve().parents[2]
BIN: Final = Path(sys.executable).parent
TOPIC_ROOT: Final = DEFAULT_ROOT
DATABASE: Final = "telemetry"
BRIDGE_READY_LINE: Final = "subscribed to"
#: The certificate names of the bridge and the API (the gateways are named by each benchmark).
BRIDGE_IDENTITY: Final = pki_mod.BRIDGE_IDENTITY
API_IDENTITY: Final = pki_mod.API_IDENTITY


def unique_ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(100):
        if len(ports) == n:
            break
        port = free_port()
        if port not in ports:
            ports.append(port)
    if len(ports) != n:
        raise RuntimeError("could not find free loopback ports")
    return ports


@dataclass
class Stack:
    """The running servers of one benchmark and the processes it started (stopped in reverse)."""

    work: Path
    pki: pki_mod.Pki
    tls_port: int = 0
    local_port: int = 0
    #: The services' TLS listener (bridges, API): only the services CA's certificates.
    service_port: int = 0
    influx_url: str = ""
    bridge_url: str = ""
    procs: list[ManagedProcess] = field(default_factory=list)
    #: The bridge's MQTT session (client id and share group), the same for every bridge this
    #: stack starts: a bridge started again (another setting, same run) takes over the session
    #: of the one before, instead of leaving a persistent session behind whose queue the broker
    #: keeps filling with every later reading.
    bridge_client_id: str = field(default_factory=lambda: f"bench-bridge-{uuid.uuid4().hex[:8]}")
    bridge_share_group: str = field(default_factory=lambda: f"g{uuid.uuid4().hex[:8]}")
    #: One keep-alive client for the bridge's status: a new httpx client per poll (every
    #: 20 ms) builds an SSL context each time and cost a quarter of a core, taken from the
    #: processes being measured.
    _status_http: httpx.Client | None = None

    def identity(self, name: str) -> Identity:
        """The certificate of client ``name`` (a gateway, the bridge, the API)."""
        cert, key = self.pki.client_paths(name)
        return Identity(self.pki.ca_file, cert, key)

    def port_for(self, name: str) -> int:
        """The listener of client ``name``: the services', or the gateways'."""
        return self.service_port if name in pki_mod.SERVICE_IDENTITIES else self.tls_port

    def mqtt_settings(self, name: str) -> dict[str, object]:
        """The ``mqtt`` settings group of a service connecting as ``name``."""
        ident = self.identity(name)
        return {
            "host": "127.0.0.1",
            "port": self.port_for(name),
            "ca_file": ident.ca_file,
            "cert_file": ident.cert_file,
            "key_file": ident.key_file,
        }

    def proc(self, name: str) -> ManagedProcess:
        return next(p for p in self.procs if p.name == name)

    def named(self, *names: str) -> dict[str, ManagedProcess]:
        return {p.name: p for p in self.procs if p.name in names}

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` from the repository root, its output in ``WORK/NAME.log``."""
        proc = ManagedProcess(
            name,
            argv,
            log_file=self.work / f"{name}.log",
            env=None if env is None else {**os.environ, **env},
            cwd=REPO,
        )
        self.procs.append(proc)
        proc.start()
        return proc

    def bridge_metrics(self) -> dict[str, float]:
        """The bridge's own counters (its /status document), or {} when it does not answer."""
        if self._status_http is None:
            self._status_http = httpx.Client(timeout=5.0)
        try:
            r = self._status_http.get(f"{self.bridge_url}/status")
            metrics: dict[str, float] = r.json().get("metrics", {})
        except (httpx.HTTPError, ValueError):
            return {}
        return metrics

    def stop_all(self) -> None:
        if self._status_http is not None:
            self._status_http.close()
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=10)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name} failed: {exc}", file=sys.stderr)


@contextmanager
def running_stack(
    work: Path, gateways: Iterable[str] = (), *, influxd: bool = True
) -> Iterator[Stack]:
    """A dev PKI (with a certificate for each of ``gateways``), Mosquitto and, unless
    ``influxd`` is false, InfluxDB; everything started is stopped when the block ends."""
    pki = pki_mod.init(work / "pki")
    for gateway in gateways:
        pki_mod.issue_gateway(pki.dir, gateway)
    stack = Stack(work, pki)
    try:
        stack.tls_port, stack.local_port, http_port, stack.service_port = unique_ports(4)
        stack.procs.append(
            start_mosquitto(
                work / "mosquitto",
                pki,
                stack.tls_port,
                stack.local_port,
                TOPIC_ROOT,
                service_port=stack.service_port,
            )
        )
        if influxd:
            stack.procs.append(start_influxd(work / "influxd", http_port))
            stack.influx_url = f"http://127.0.0.1:{http_port}"
        yield stack
    finally:
        stack.stop_all()


def start_bridge(
    stack: Stack, extra_env: Mapping[str, str], profile: Path | None = None
) -> ManagedProcess:
    """The real ``telemetry-bridge`` (the stack's bridge session and share group), once
    subscribed; with ``profile``, under ``python -m cProfile`` writing its stats there. One
    bridge at a time: stop it (:func:`stop_bridge`) before starting another."""
    http_port = free_port()
    stack.bridge_url = f"http://127.0.0.1:{http_port}"
    env = env_for(
        BridgeSettings,
        http_port=http_port,
        mqtt=stack.mqtt_settings(BRIDGE_IDENTITY),
        topic_root=TOPIC_ROOT,
        log_format="json",
        influx={"url": stack.influx_url, "database": DATABASE},
        client_id=stack.bridge_client_id,
        share_group=stack.bridge_share_group,
        bindings="first-come",  # the load generators' chargers are provisioned nowhere
        # ... and a load generator brings its whole fleet at once, up to 10,000 chargers behind
        # one gateway: the per-gateway charger limits are off (the other limits apply).
        limit_chargers_per_gateway=0,
        limit_new_chargers_per_hour=0,
    )
    if profile is None:
        argv = [str(BIN / "telemetry-bridge")]
    else:
        # SIGTERM cancels the bridge's main task, so cProfile gets to write its file.
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bridge"]
    for old in [p for p in stack.procs if p.name == "bridge"]:
        if old.is_running():
            raise RuntimeError("a bridge is running already: stop it first")
        stack.procs.remove(old)  # its log is kept as bridge-N.log (below)
    previous_log = stack.work / "bridge.log"
    if previous_log.exists():
        n = len(list(stack.work.glob("bridge-*.log"))) + 1
        previous_log.rename(stack.work / f"bridge-{n}.log")
    bridge = stack.start("bridge", argv, {**env, **extra_env})
    bridge.wait_ready(lambda: BRIDGE_READY_LINE in bridge.log_file.read_text(), timeout=30)
    return bridge


def start_api(
    stack: Stack, keys: Mapping[str, str], extra_env: Mapping[str, str]
) -> tuple[ManagedProcess, str]:
    """The real ``telemetry-api`` with the broker configured (live mirror); once /readyz is 200.
    Returns the process and its URL."""
    port = free_port()
    env = env_for(
        ApiSettings,
        host="127.0.0.1",
        port=port,
        influx={"url": stack.influx_url, "database": DATABASE},
        mqtt=stack.mqtt_settings(API_IDENTITY),
        topic_root=TOPIC_ROOT,
        log_format="json",
        keys=dict(keys),
    )
    api = stack.start("api", [str(BIN / "telemetry-api")], {**env, **extra_env})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    api.wait_ready(ready, timeout=60)
    return api, url


def listening(port: int) -> bool:
    """Something accepts TCP connections on loopback ``port``."""
    return port_open("127.0.0.1", port)


def wait_exit(proc: ManagedProcess, timeout: float) -> None:
    """Until ``proc`` exits (stopped after ``timeout``); fails unless it exited with 0."""
    end = time.monotonic() + timeout
    while proc.is_running():
        if time.monotonic() > end:
            proc.stop(timeout=5)
            raise RuntimeError(f"{proc.name} still running after {timeout:.0f}s: stopped")
        time.sleep(0.05)
    if proc.returncode() != 0:
        raise RuntimeError(f"{proc.name} failed ({proc.returncode()}):\n{proc.log_tail()}")


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    """Until ``check()`` is true; fails after ``timeout`` seconds, naming ``what``."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- the stack of `telemetry-stack up`, driven through its Python API ---------------------------


def stack_up(state_dir: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """``telemetry-stack up --gateways 0`` in ``state_dir`` (Mosquitto with TLS and client
    certificates, InfluxDB, bridge, API, rollups, sessions; every one ready): its state. Gateway
    certificates issued into ``state_dir/pki`` beforehand are accepted by its broker (the PKI is
    kept when it exists). On a failure what was started is stopped again."""
    from telemetry_stack.stack import UpOptions, up

    return up(UpOptions(state_dir=state_dir, gateways=0), echo)


def stack_pid(state_dir: Path, service: str) -> int | None:
    """The recorded pid of one service of a stack from :func:`stack_up`."""
    from telemetry_stack.state import load_state, records

    return records(load_state(state_dir))[service].pid


def stack_restart(state_dir: Path, service: str) -> int:
    """``telemetry-stack restart SERVICE``: stopped by its recorded pid (SIGTERM; a killed one is
    just started), started the same way, ready; its new pid."""
    from telemetry_stack.supervisor import restart

    return restart(state_dir, service)


def stack_down(state_dir: Path) -> list[str]:
    """``telemetry-stack down``: every service stopped by its recorded pid; one line each."""
    from telemetry_stack.supervisor import down

    return down(state_dir)
