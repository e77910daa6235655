"""The shipped Prometheus alerting rules (docker/prometheus/alerts.yml) and Alertmanager
configuration (docker/alertmanager/alertmanager.yml).

``promtool test rules`` runs tests/unit/deploy/alerts_test.yml, where every alert fires on its
condition with its labels and rendered annotations and stays quiet on healthy series; the
checks here make sure that file keeps covering every rule, that each rule carries what an
operator needs, and that the rules query only metrics the services export. promtool and amtool
come from the Debian packages ``prometheus`` and ``prometheus-alertmanager``
(scripts/bootstrap.sh installs them); without them those tests are skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.support.compose_file import ROOT

RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
ALERTMANAGER_CONFIG = ROOT / "docker" / "alertmanager" / "alertmanager.yml"
ALARM_KINDS = {
    "charger_silent",
    "connector_faulted",
    "gateway_offline",
    "seq_gap_confirmed",
    "deadletters",
    "edge_backlog",
    "certificate_expiry",
    "gateway_clock",
}
#: Metrics the rules may use that no registry on this branch defines: Prometheus's own ``up``,
#: and the API's alarm gauge, agreed with the alarm evaluator (docs/design.md, Alarms).
CONTRACT_METRICS = {"up"}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package}; scripts/bootstrap.sh)")
    return path


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _exported(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    """``promtool check rules`` parses every rule and its templates."""
    result = _run([_tool("promtool", "prometheus"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_rule_tests_pass() -> None:
    """``promtool test rules``: every case of alerts_test.yml (firing and quiet) holds."""
    result = _run([_tool("promtool", "prometheus"), "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_accepts_the_alertmanager_config() -> None:
    """``amtool check-config`` accepts the shipped Alertmanager configuration."""
    result = _run(
        [_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER_CONFIG)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """alerts_test.yml loads the shipped file and has, for every alert, a case where it fires
    and one where it does not; it tests no alert that does not exist."""
    spec = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert [(RULE_TESTS.parent / f).resolve() for f in spec["rule_files"]] == [RULES.resolve()]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert firing == names
    assert quiet == names


def test_every_alert_says_how_bad_what_and_what_to_do() -> None:
    """Each alert has a unique name, severity warning or critical, a ``kind`` (the alarm kind
    for the agreed alarm conditions), and a summary, a description and a runbook line."""
    alerts = _alerts()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    kinds = set()
    for rule in alerts:
        labels, notes = rule["labels"], rule["annotations"]
        assert labels["severity"] in {"warning", "critical"}, rule["alert"]
        kinds.add(labels["kind"])
        for key in ("summary", "description", "runbook"):
            assert notes.get(key, "").strip(), f"{rule['alert']}: no {key}"
    assert kinds >= ALARM_KINDS
    assert {"service_down", "influxdb_unhealthy"} <= kinds


def test_rules_query_only_exported_metrics(tmp_path: Path) -> None:
    """Every metric a rule queries is one the bridge, the edge agent or the API exports (with
    prometheus_client's suffixes) or an agreed one: renaming a metric breaks this test, not the
    alerting in production."""
    from edge_agent.clock import ClockWatch
    from edge_agent.metrics import registry_for
    from edge_agent.outbox import Outbox
    from edge_agent.publisher import Counters
    from processor.metrics import Metrics
    from query_api.metrics import ApiMetrics

    client = types.SimpleNamespace(connects=1, connected=True)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        clock = ClockWatch(60, timedelta(days=30), os_status=lambda: True)  # a source that tells
        edge = registry_for(box, Counters(), client, cert_not_after=None, clock=clock)
        exported = _exported(edge)
    exported |= {"telemetry_edge_certificate_expiry_timestamp_seconds"}  # only with a cert
    exported |= _exported(Metrics().registry) | _exported(ApiMetrics().registry)
    exported |= CONTRACT_METRICS
    for rule in _alerts():
        expr = re.sub(r"\[[^]]*\]|\{[^}]*\}|\"[^\"]*\"", "", rule["expr"])
        names = {n for n in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr) if "_" in n}
        names |= {"up"} if re.search(r"\bup\b", expr) else set()
        metrics = {n for n in names if n.startswith("telemetry_") or n == "up"}
        assert metrics, f"{rule['alert']}: no metric in {rule['expr']!r}"
        for metric in metrics:
            assert metric in exported, f"{rule['alert']}: {metric} is not exported"
