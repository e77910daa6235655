"""Processes of the pipeline for integration tests: the real console scripts, started with the
environment their settings models read (names derived by ``env_for``) and stopped by PID at the
end of each test (``procs``)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from bridge.settings import BridgeSettings
from query_api.settings import ApiSettings
from telemetry_common.settings import ServiceSettings, env_for
from telemetry_stack.servers import ManagedProcess, free_port
from tests.support.fixtures import BrokerInfo, InfluxTarget

BIN = Path(sys.executable).parent


def client_settings(broker: BrokerInfo, identity: str) -> dict[str, Any]:
    """The settings of a service that connects to ``broker`` as ``identity`` (TLS), logging
    JSON: for ``env_for``."""
    cert, key = broker.pki.client(identity)
    mqtt = {
        "host": broker.host,
        "port": broker.port_for(identity),
        "ca_file": broker.ca_file,
        "cert_file": cert,
        "key_file": key,
    }
    return {"mqtt": mqtt, "topic_root": broker.topic_root, "log_format": "json"}


def mqtt_env(settings: type[ServiceSettings], broker: BrokerInfo, identity: str) -> dict[str, str]:
    """:func:`client_settings` as the environment of the service ``settings`` configures."""
    return env_for(settings, **client_settings(broker, identity))


class Procs:
    """Processes started by one test, all stopped by PID at its end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        proc = ManagedProcess(
            name, argv, log_file=self.logs / f"{name}.log", env={**os.environ, **env}
        )
        proc.start()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(timeout=10)


def start_bridge(
    procs: Procs,
    broker: BrokerInfo,
    db: InfluxTarget,
    *,
    name: str = "bridge",
    client_id: str | None = None,
    share_group: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """A ``telemetry-bridge`` process, returned once its shared subscription is in place.

    By default each call gets a session and share group of its own, so a session left by another
    test cannot take this test's messages; pass the same ``client_id`` to resume a session and the
    same ``share_group`` to split load between bridges. Bindings are ``first-come`` (the dev
    option: the tests' gateways send for chargers nobody provisioned) unless ``extra_env`` says
    otherwise.
    """
    env = env_for(
        BridgeSettings,
        **client_settings(broker, "telemetry-bridge"),
        influx={"url": db.url, "database": db.database},
        client_id=client_id or f"bridge-{uuid.uuid4().hex[:8]}",
        share_group=share_group or f"g{uuid.uuid4().hex[:8]}",
        http_port=free_port(),
        bindings="first-come",
    ) | dict(extra_env or {})
    bridge = procs.start(name, [str(BIN / "telemetry-bridge")], env)
    # Until the shared subscription exists the broker would drop the gateway's messages.
    seen = bridge.log_file.read_text().count("subscribed to") if bridge.log_file.exists() else 0
    bridge.wait_ready(lambda: bridge.log_file.read_text().count("subscribed to") > seen, timeout=30)
    return bridge


def start_api(
    procs: Procs,
    db: InfluxTarget,
    read_key: str,
    *,
    broker: BrokerInfo | None = None,
    keys: Mapping[str, str] | None = None,
    name: str = "api",
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """A ``telemetry-api`` process; its URL once /healthz answers. With ``broker``, the API
    connects to it as ``telemetry-api`` (live mirror, HTTP ingest); ``keys`` adds roles."""
    port = free_port()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "influx": {"url": db.url, "database": db.database},
        "keys": {"read": read_key, "ingest": "i" * 32, **(keys or {})},
        "log_format": "json",
    }
    if broker is not None:
        settings |= client_settings(broker, "telemetry-api")
    env = env_for(ApiSettings, **settings) | dict(extra_env or {})
    api = procs.start(name, [str(BIN / "telemetry-api")], env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    api.wait_ready(healthy, timeout=30)
    return url


def stopped(proc: ManagedProcess) -> Callable[[], bool]:
    """A check: ``proc`` has exited."""
    return lambda: not proc.is_running()


def logged(proc: ManagedProcess, text: str) -> Callable[[], bool]:
    """A check: ``proc``'s log holds ``text``."""
    return lambda: proc.log_file.exists() and text in proc.log_file.read_text()
