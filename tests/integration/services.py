"""Processes of the pipeline for integration tests: the real console scripts, started with the
environment contract of README.md and stopped by PID at the end of each test (``procs``)."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_stack.servers import ManagedProcess, free_port
from tests.support.fixtures import BrokerInfo, InfluxTarget

BIN = Path(sys.executable).parent


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def mqtt_env(prefix: str, broker: BrokerInfo, identity: str) -> dict[str, str]:
    cert, key = broker.pki.client(identity)
    return {
        f"{prefix}MQTT__HOST": broker.host,
        f"{prefix}MQTT__PORT": str(broker.tls_port),
        f"{prefix}MQTT__CA_FILE": str(broker.ca_file),
        f"{prefix}MQTT__CERT_FILE": str(cert),
        f"{prefix}MQTT__KEY_FILE": str(key),
        f"{prefix}TOPIC_ROOT": broker.topic_root,
        f"{prefix}LOG_FORMAT": "json",
    }


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
    same ``share_group`` to split load between bridges.
    """
    env = mqtt_env("TELEMETRY_BRIDGE_", broker, "telemetry-bridge") | {
        "TELEMETRY_BRIDGE_INFLUX__URL": db.url,
        "TELEMETRY_BRIDGE_INFLUX__DATABASE": db.database,
        "TELEMETRY_BRIDGE_CLIENT_ID": client_id or f"bridge-{uuid.uuid4().hex[:8]}",
        "TELEMETRY_BRIDGE_SHARE_GROUP": share_group or f"g{uuid.uuid4().hex[:8]}",
        "TELEMETRY_BRIDGE_HTTP_PORT": str(free_port()),
        **(extra_env or {}),
    }
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
    env = {
        "TELEMETRY_API_HOST": "127.0.0.1",
        "TELEMETRY_API_PORT": str(port),
        "TELEMETRY_API_INFLUX__URL": db.url,
        "TELEMETRY_API_INFLUX__DATABASE": db.database,
        "TELEMETRY_API_KEYS": orjson.dumps(
            {"read": read_key, "ingest": "i" * 32, **(keys or {})}
        ).decode(),
        "TELEMETRY_API_LOG_FORMAT": "json",
        **(mqtt_env("TELEMETRY_API_", broker, "telemetry-api") if broker is not None else {}),
        **(extra_env or {}),
    }
    api = procs.start(name, [str(BIN / "telemetry-api")], env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    api.wait_ready(healthy, timeout=30)
    return url


class GatewayPublisher:
    """QoS 1 publishes as one gateway identity; ``publish`` returns after a successful PUBACK
    and fails the test on a refusal (reason code >= 0x80) or no PUBACK in ``wait_s``."""

    def __init__(self, client: mqtt.Client, topic: str, wait_s: float = 20.0) -> None:
        self.client = client
        self.topic = topic
        self.wait_s = wait_s
        self._acks: dict[int, int] = {}
        self._lock = threading.Lock()
        client.on_publish = self._on_publish

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._lock:
            self._acks[mid] = rc.value

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        info.wait_for_publish(self.wait_s)
        assert info.is_published(), f"no PUBACK within {self.wait_s}s"
        with self._lock:
            code = self._acks.pop(info.mid)
        assert code < 0x80, f"broker refused the publish: reason code {code:#x}"


def influxql(url: str, database: str, statement: str) -> list[list[Any]]:
    """The rows of the first series an InfluxQL statement returns (no rows: [])."""
    r = httpx.get(f"{url}/query", params={"db": database, "q": statement}, timeout=10)
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    series = result.get("series") or []
    return list(series[0]["values"]) if series else []
