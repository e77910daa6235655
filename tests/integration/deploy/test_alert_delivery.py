"""An alert travels the shipped path end to end: Prometheus with docker/prometheus/alerts.yml
scrapes a gateway's metrics, Alertmanager with docker/alertmanager/alertmanager.yml routes what
fires, and the example receiver docker/alertmanager/webhook_receiver.py logs it.

The test serves a tiny metrics page on loopback: a gateway certificate that expires in one day
(``telemetry_edge_certificate_expiry_timestamp_seconds``). Prometheus (``prometheus``), the
Alertmanager (``prometheus-alertmanager``) and the receiver run as processes of their own on
free loopback ports, with 1-second scrape and evaluation intervals and short Alertmanager group
timings (everything else as shipped); all three are stopped by PID at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from edge_agent.metrics import serve
from telemetry_stack.servers import free_port
from tests.support.compose_file import ROOT
from tests.support.processes import Procs
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERTMANAGER_CONFIG = ROOT / "docker" / "alertmanager" / "alertmanager.yml"
RECEIVER = ROOT / "docker" / "alertmanager" / "webhook_receiver.py"
METRIC = "telemetry_edge_certificate_expiry_timestamp_seconds"


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package}; scripts/bootstrap.sh)")
    return path


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Received:
    """The receiver's JSON-lines log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def alerts(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [orjson.loads(x) for x in self.path.read_bytes().splitlines() if x.strip()]

    def find(self, alertname: str, status: str) -> dict[str, Any] | None:
        for alert in self.alerts():
            if (alert["alertname"], alert["status"]) == (alertname, status):
                return alert
        return None


@pytest.fixture
def certificate_gauge() -> Iterator[tuple[Gauge, int]]:
    """A loopback metrics page with the certificate-expiry gauge of gateway ``gw-alert``."""
    registry = CollectorRegistry()
    gauge = Gauge(METRIC, "notAfter of the gateway's client certificate", registry=registry)
    port = free_port()
    server = serve("127.0.0.1", port, registry)
    yield gauge, port
    server.shutdown()
    server.server_close()


def test_certificate_expiry_alert_reaches_the_webhook_and_resolves(
    procs: Procs, tmp_path: Path, certificate_gauge: tuple[Gauge, int]
) -> None:
    """A certificate expiring in one day fires TelemetryCertificateExpiryCritical: the receiver
    logs it (firing, severity critical, the gateway's label, the summary and the runbook); the
    warning for the same gateway is held back by the shipped inhibit rule. Once the certificate
    is renewed (notAfter a year ahead) the receiver logs the alert resolved."""
    prometheus = _binary("prometheus", "prometheus")
    alertmanager = _binary("prometheus-alertmanager", "prometheus-alertmanager")
    gauge, metrics_port = certificate_gauge
    gauge.set(time.time() + 86400)

    hook_port = free_port()
    received = Received(tmp_path / "alerts.jsonl")
    hook = procs.start(
        "alert-webhook",
        [sys.executable, str(RECEIVER), "--port", str(hook_port), "--log-file", str(received.path)],
        {},
    )
    hook.wait_ready(lambda: _ready(f"http://127.0.0.1:{hook_port}/healthz"), 20)

    am_port = free_port()
    am_config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    am_config["route"] |= {"group_wait": "2s", "group_interval": "1s"}
    for receiver in am_config["receivers"]:
        for webhook in receiver["webhook_configs"]:
            webhook["url"] = f"http://127.0.0.1:{hook_port}/alerts"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config), encoding="utf-8")
    am = procs.start(
        "alertmanager",
        [
            alertmanager,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        {},
    )
    am.wait_ready(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready"), 30)

    prom_port = free_port()
    prom_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "telemetry-edge",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"gateway": "gw-alert"}}
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config), encoding="utf-8")
    prom = procs.start(
        "prometheus",
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        {},
    )
    prom.wait_ready(lambda: _ready(f"http://127.0.0.1:{prom_port}/-/ready"), 30)

    critical = "TelemetryCertificateExpiryCritical"
    wait_until(
        "the critical alert at the webhook", lambda: bool(received.find(critical, "firing")), 60
    )
    alert = received.find(critical, "firing")
    assert alert is not None
    assert alert["severity"] == "critical"
    assert alert["kind"] == "certificate_expiry"
    assert alert["labels"]["gateway"] == "gw-alert"
    assert alert["summary"].startswith("Gateway gw-alert: client certificate expires in 23h")
    assert "--reissue" in alert["runbook"]

    def warning_inhibited() -> bool:
        r = httpx.get(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=5)
        return any(
            a["labels"]["alertname"] == "TelemetryCertificateExpiry"
            and a["status"]["state"] == "suppressed"
            and a["status"]["inhibitedBy"]
            for a in r.json()
        )

    wait_until("the warning inhibited by the critical alert", warning_inhibited, 30)
    assert received.find("TelemetryCertificateExpiry", "firing") is None

    gauge.set(time.time() + 365 * 86400)
    wait_until(
        "the resolved notice at the webhook", lambda: bool(received.find(critical, "resolved")), 60
    )
