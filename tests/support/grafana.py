"""The repository's Grafana dashboards as data, and their InfluxQL queries prepared the way
Grafana prepares them before sending them to InfluxDB.

Preparation: dashboard variables substituted by the datasource's rules (a constant as is; the
custom "All" value as is; a single value regex-escaped where it stands in a regex, as is
elsewhere), then the backend's macros in its order (``$timeFilter`` ->
``time >= Fms and time <= Tms``, ``$interval``, ``$__interval_ms``, ``$__interval``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

DASHBOARD_DIR: Final = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
INFLUX_UID: Final = "charger-telemetry-influxdb"
PROMETHEUS_UID: Final = "charger-telemetry-prometheus"
#: The value Grafana selects for a variable's "All" option.
ALL: Final = "$__all"
#: The $__interval queries run with by default (a 4 h range at Grafana's usual resolution; above
#: every panel's minimum interval).
STEP_S: Final = 60


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard of grafana/dashboards by file name."""
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        out[path.name] = data
    return out


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def influxql_queries(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(file, panel title or "variable NAME", refId, query) of every InfluxQL query."""
    out = []
    for name, dashboard in dashboards.items():
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query" and var["datasource"]["uid"] == INFLUX_UID:
                out.append((name, f"variable {var['name']}", "-", var["query"]))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["uid"] == INFLUX_UID:
                    assert target.get("rawQuery"), f"{name}: {panel['title']}: not a raw query"
                    out.append((name, panel["title"], target["refId"], target["query"]))
    return out


def escape_regex(value: str) -> str:
    """@grafana/data's escapeRegex."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m[0], value)


def format_interval(seconds: int) -> str:
    """gtime.FormatInterval for whole seconds."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def prepare(
    query: str,
    dashboard: dict[str, Any],
    selection: dict[str, str],
    start: datetime,
    end: datetime,
    step_s: int = STEP_S,
) -> str:
    """``query`` as Grafana sends it to InfluxDB for this dashboard, variable selection, time
    range and interval."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    regexes = [m[1] for m in re.finditer(r"[=!]~\s*/((?:[^/\\\n]|\\.)+)/", query)]

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        var = variables.get(name)
        if var is None:  # a built-in ($__interval, $timeFilter): the backend's job below
            return match[0]
        if var["type"] == "constant":
            return str(var["query"])
        chosen = selection[name]
        if chosen == ALL:
            assert var["includeAll"], name
            return str(var["allValue"])  # a custom all value is never escaped
        assert not var.get("multi"), "multi-value variables are not emulated here"
        used_in_regex = any(re.search(rf"\$(?:\{{{name}\}}|{name}\b)", r) for r in regexes)
        return escape_regex(chosen) if used_in_regex else chosen

    text = re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]", value, query)
    from_ms, to_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    text = text.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    text = text.replace("$interval", format_interval(step_s))
    text = text.replace("$__interval_ms", str(step_s * 1000))
    return text.replace("$__interval", format_interval(step_s))
