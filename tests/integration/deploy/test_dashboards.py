"""Every InfluxQL query of the Grafana dashboards, run against a real InfluxDB holding data that
the real bridge + processor wrote, returns the series and values the panel is meant to show.

The data: two gateways publish, over TLS with their own certificates, readings of four chargers
that are online (two), stale and offline by the dashboards' thresholds; one gateway's seq has a
gap of 5. A `telemetry-bridge` stores them. Each query is then prepared the way Grafana prepares
it: dashboard variables substituted by the datasource's rules (a constant as is; the custom
"All" value as is; a single value regex-escaped where it stands in a regex, as is elsewhere),
then the backend's macros in its order (`$timeFilter` -> ``time >= Fms and time <= Tms``,
`$interval`, `$__interval_ms`, `$__interval`), and sent to ``/query`` with ``epoch=ms`` like
Grafana. Expected values are computed from the readings published, not copied from a run.

A panel added without an expectation here fails ``test_every_influxql_query_is_checked``; a
schema or query change that empties or alters a panel fails its case.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.settings import env_for
from tests.support.dashboard_fleet import (
    Fleet,
    Reading,
    batch_payload,
    make_readings,
    make_sessions,
)
from tests.support.fixtures import BrokerInfo, InfluxInfo, InfluxTarget
from tests.support.gateway_publisher import GatewayPublisher, connect_gateway
from tests.support.grafana import (
    ALL,
    PROMETHEUS_UID,
    STEP_S,
    influxql_queries,
    load_dashboards,
    panels,
    prepare,
)
from tests.support.processes import Procs, start_bridge
from tests.support.rollups import create_rollup_policies, rollups_of, write_rollups
from tests.support.sessions_data import create_keep, ns, session_line, write_keep
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RANGE = timedelta(hours=4)
HOUR = timedelta(hours=1)
#: The sessions panels' own range (their ``timeFrom``).
SESSIONS_RANGE = timedelta(days=7)
#: Readings per MQTT message.
CHUNK = 50


# --- the data: stored by a real bridge ---------------------------------------------------------


def _count(db: InfluxTarget) -> int:
    rows = _query(db, 'SELECT count("seq") FROM "readings"')
    return int(rows[0]["values"][0][1]) if rows else 0


@pytest.fixture(scope="module")
def fleet(
    broker: BrokerInfo, influxd: InfluxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """A fresh database filled by a real bridge from two gateways' MQTT messages."""
    tag = uuid.uuid4().hex[:6]
    t0 = datetime.now(UTC).replace(microsecond=0)
    readings, names = make_readings(tag, t0)
    db = InfluxTarget(url=influxd.url, database=f"dash_{tag}")
    httpx.post(f"{db.url}/query", data={"q": f'CREATE DATABASE "{db.database}"'}, timeout=10)
    procs = Procs(tmp_path_factory.mktemp("dashboard-logs"))
    clients: list[mqtt.Client] = []
    try:
        bridge = start_bridge(procs, broker, db)
        assert bridge.env is not None
        for gateway in (names["a"], names["b"]):
            client = connect_gateway(broker, gateway)
            clients.append(client)
            publisher = GatewayPublisher(client, broker.topics.readings(gateway))
            ours = [r for r in readings if r.gateway == gateway]
            for i in range(0, len(ours), CHUNK):
                publisher.publish(batch_payload(gateway, ours[i : i + CHUNK]))
        wait_until(
            f"{len(readings)} readings stored", lambda: _count(db) == len(readings), timeout=60
        )
        # The long-range panels read the 1-hour rollups: those of the same readings, written
        # as the rollup job's contract defines them.
        create_rollup_policies(db.url, db.database)
        rows = [(r.charger, r.gateway, r.ts, r.status, r.values) for r in readings]
        write_rollups(db.url, db.database, "1h", rollups_of(rows, HOUR))
        # The sessions panels read keep.sessions: points as the sessions job writes them.
        sessions = make_sessions(names, t0)
        create_keep(db.url, db.database)
        write_keep(db.url, db.database, [session_line(s) for s in sessions])
        (port_variable,) = env_for(BridgeSettings, http_port=0)
        port = bridge.env[port_variable]
        yield Fleet(db, readings, names, f"http://127.0.0.1:{port}/metrics", sessions)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        procs.stop_all()
        httpx.post(f"{db.url}/query", data={"q": f'DROP DATABASE "{db.database}"'}, timeout=10)


def _query(db: InfluxTarget, statement: str) -> list[dict[str, Any]]:
    """The series of an InfluxQL statement (``epoch=ms``, as Grafana asks); fails on an error."""
    r = httpx.get(
        f"{db.url}/query",
        params={"db": db.database, "q": statement, "epoch": "ms"},
        timeout=15,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "error" not in body, body
    (result,) = body["results"]
    assert "error" not in result, f"{result['error']}\n{statement}"
    series: list[dict[str, Any]] = result.get("series", [])
    return series


# --- what each panel must show ------------------------------------------------------------------

Series = list[dict[str, Any]]
Check = Callable[[Series, Fleet, dict[str, str]], None]


def _bucket(ms: int) -> int:
    return ms - ms % (STEP_S * 1000)


def _per_bucket(readings: list[Reading], pick: Callable[[list[Reading]], Any]) -> dict[int, Any]:
    groups: dict[int, list[Reading]] = defaultdict(list)
    for r in readings:
        groups[_bucket(r.ms)].append(r)
    return {t: pick(sorted(rs, key=lambda r: r.ts)) for t, rs in groups.items()}


def _mean(key: str) -> Callable[[list[Reading]], float]:
    return lambda rs: statistics.fmean(r.values[key] for r in rs)


def _column(series: dict[str, Any], name: str) -> dict[int, Any]:
    i = series["columns"].index(name)
    return {row[0]: row[i] for row in series["values"]}


def _one(series: Series) -> dict[str, Any]:
    assert len(series) == 1, series
    return series[0]


def _by_tag(series: Series, tag: str) -> dict[str, dict[str, Any]]:
    return {s["tags"][tag]: s for s in series}


def _approx(got: dict[int, Any], want: dict[int, Any]) -> None:
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)


def _selected_charger(fleet: Fleet, sel: dict[str, str]) -> str:
    return fleet.names[sel["charger"]]


def _selected_gateways(fleet: Fleet, sel: dict[str, str]) -> list[str]:
    return fleet.gateways if sel["gateway"] == ALL else [fleet.names[sel["gateway"]]]


def check_states(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    (row,) = _one(series)["values"]
    assert dict(zip(_one(series)["columns"][1:], row[1:], strict=True)) == {
        "online": 2,
        "stale": 1,
        "offline": 1,
    }


def check_power_now(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    newest = [fleet.of(charger=fleet.names[c])[-1].values["power_w"] for c in ("on3", "on1")]
    assert _one(series)["values"][0][1] == pytest.approx(sum(newest))


def check_count(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    assert _one(series)["values"][0][1] == len(fleet.readings)


def check_total_power(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    want: dict[int, float] = defaultdict(float)
    for charger in fleet.chargers:
        for t, v in _per_bucket(fleet.of(charger=charger), _mean("power_w")).items():
            want[t] += v
    _approx(_column(_one(series), "total_power_w"), dict(want))


def check_rate_by_gateway(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    got = _by_tag(series, "gateway_id")
    gateways = _selected_gateways(fleet, sel) if "gateway" in sel else fleet.gateways
    assert sorted(got) == gateways
    for gw in gateways:
        values = _column(got[gw], "readings_per_s")
        assert all(v >= 0 for v in values.values())
        nonzero = {t: v for t, v in values.items() if v}
        _approx(nonzero, _per_bucket(fleet.of(gateway=gw), lambda rs: len(rs) / STEP_S))


def check_chargers_table(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    got = {
        (s["tags"]["charger_id"], s["tags"]["gateway_id"]): tuple(s["values"][0]) for s in series
    }
    want = {}
    for charger in fleet.chargers:
        newest = fleet.of(charger=charger)[-1]
        want[charger, newest.gateway] = (newest.ms, newest.seq)
    assert got == want


def check_tag_values(key: str) -> Check:
    def check(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
        got = sorted(row[1] for row in _one(series)["values"])
        assert {row[0] for row in _one(series)["values"]} == {key}
        if key == "gateway_id":
            assert got == fleet.gateways
        else:
            gws = _selected_gateways(fleet, sel)
            assert got == sorted({r.charger for r in fleet.readings if r.gateway in gws})

    return check


def check_status(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    newest = fleet.of(charger=_selected_charger(fleet, sel))[-1]
    assert _one(series)["values"] == [[newest.ms, newest.status]]


def check_newest(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    newest = fleet.of(charger=_selected_charger(fleet, sel))[-1]
    assert _one(series)["values"] == [[newest.ms, newest.seq]]


def check_energy_spread(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    energy = [r.values["energy_wh"] for r in fleet.of(charger=_selected_charger(fleet, sel))]
    assert _one(series)["values"][0][1] == pytest.approx(max(energy) - min(energy))


def check_power_now_of_charger(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    newest = fleet.of(charger=_selected_charger(fleet, sel))[-1]
    assert _one(series)["values"] == [[newest.ms, newest.values["power_w"]]]


def check_bucket_mean(column: str, key: str) -> Check:
    def check(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
        mine = fleet.of(charger=_selected_charger(fleet, sel))
        _approx(_column(_one(series), column), _per_bucket(mine, _mean(key)))

    return check


def check_energy_register(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    mine = fleet.of(charger=_selected_charger(fleet, sel))
    want = _per_bucket(mine, lambda rs: max(r.values["energy_wh"] for r in rs))
    _approx(_column(_one(series), "energy_wh"), want)


def check_phases(quantity: str, unit: str) -> Check:
    """``mean(/^{quantity}(_l[1-3])?_{unit}$/)``: a column per such field in the measurement;
    the charger's own fields carry its per-bucket means, the others are empty."""

    def check(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
        mine = fleet.of(charger=_selected_charger(fleet, sel))
        pattern = re.compile(rf"^{quantity}(_l[1-3])?_{unit}$")
        everywhere = {k for r in fleet.readings for k in r.values if pattern.match(k)}
        own = {k for r in mine for k in r.values if pattern.match(k)}
        s = _one(series)
        assert set(s["columns"][1:]) == {f"mean_{k}" for k in everywhere}
        for key in everywhere:
            got = _column(s, f"mean_{key}")
            if key in own:
                _approx(got, _per_bucket(mine, _mean(key)))
            else:
                assert set(got.values()) == {None}, key

    return check


def check_status_timeline(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    mine = fleet.of(charger=_selected_charger(fleet, sel))
    assert _column(_one(series), "status") == _per_bucket(mine, lambda rs: rs[-1].status)
    if sel["charger"] == "on1":
        assert set(_column(_one(series), "status").values()) == {"Preparing", "Charging"}


def _per_hour(readings: list[Reading], pick: Callable[[list[Reading]], Any]) -> dict[int, Any]:
    """Per hour bucket (the rollups' own; the panels' interval is 1 h at least)."""
    groups: dict[int, list[Reading]] = defaultdict(list)
    for r in readings:
        groups[r.ms - r.ms % 3_600_000].append(r)
    return {t: pick(sorted(rs, key=lambda r: r.ts)) for t, rs in groups.items()}


def check_hourly_power(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    """The weighted mean of the hour's rollups is the mean of the hour's readings; min, max."""
    mine = fleet.of(charger=_selected_charger(fleet, sel))
    s = _one(series)
    _approx(_column(s, "power_w"), _per_hour(mine, _mean("power_w")))
    _approx(
        _column(s, "power_w_min"), _per_hour(mine, lambda rs: min(r.values["power_w"] for r in rs))
    )
    _approx(
        _column(s, "power_w_max"), _per_hour(mine, lambda rs: max(r.values["power_w"] for r in rs))
    )


def check_hourly_energy(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    mine = fleet.of(charger=_selected_charger(fleet, sel))
    _approx(
        _column(_one(series), "energy_wh"), _per_hour(mine, lambda rs: rs[-1].values["energy_wh"])
    )


def check_hourly_total_power(series: Series, fleet: Fleet, _sel: dict[str, str]) -> None:
    want: dict[int, float] = defaultdict(float)
    for charger in fleet.chargers:
        for t, v in _per_hour(fleet.of(charger=charger), _mean("power_w")).items():
            want[t] += v
    _approx(_column(_one(series), "total_power_w"), dict(want))


def _missing(readings: list[Reading]) -> int:
    seqs = [r.seq for r in readings]
    return max(seqs) - min(seqs) + 1 - len(seqs)


def check_missing_in_range(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    got = {gw: s["values"][0][1] for gw, s in _by_tag(series, "gateway_id").items()}
    want = {gw: _missing(fleet.of(gateway=gw)) for gw in _selected_gateways(fleet, sel)}
    assert got == want
    assert want.get(fleet.names["b"], 5) == 5  # the data really has the gap


def check_gap_series(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    got = _by_tag(series, "gateway_id")
    gateways = _selected_gateways(fleet, sel)
    assert sorted(got) == gateways
    for gw in gateways:
        values = list(_column(got[gw], "missing").values())
        assert len(values) > 10
        assert min(values) == 0
        assert sum(values) == _missing(fleet.of(gateway=gw))
        assert sorted(values)[-1] == (5 if gw == fleet.names["b"] else 0)


def check_newest_per_gateway(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    got = {gw: tuple(s["values"][0]) for gw, s in _by_tag(series, "gateway_id").items()}
    want = {}
    for gw in _selected_gateways(fleet, sel):
        newest = max(fleet.of(gateway=gw), key=lambda r: r.ts)
        want[gw] = (newest.ms, newest.seq)
    assert got == want


def _sessions_shown(fleet: Fleet, sel: dict[str, str]) -> list[dict[str, Any]]:
    """The selected charger's sessions a sessions panel shows: not superseded, started within
    the panel's own range (``timeFrom``: the last 7 days)."""
    since = datetime.now(UTC) - SESSIONS_RANGE
    charger = _selected_charger(fleet, sel)
    return [
        s
        for s in fleet.sessions
        if s["charger_id"] == charger and s["state"] != "superseded" and s["started_at"] >= since
    ]


def check_energy_per_session(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    want = {
        ns(s["started_at"]) // 10**6: s["energy_wh"] / 1000 for s in _sessions_shown(fleet, sel)
    }
    assert len(want) >= 2
    _approx(_column(_one(series), "energy_kwh"), want)


def check_sessions_per_day(series: Series, fleet: Fleet, sel: dict[str, str]) -> None:
    """Per UTC day of the 7-day range: the sessions that started and their energy; 0 on days
    without any (fill(0)); the superseded point counts nowhere."""
    day = 86_400_000
    count: dict[int, int] = defaultdict(int)
    energy: dict[int, float] = defaultdict(float)
    for s in _sessions_shown(fleet, sel):
        bucket = ns(s["started_at"]) // 10**6 // day * day
        count[bucket] += 1
        energy[bucket] += s["energy_wh"] / 1000
    got = _one(series)
    sessions, kwh = _column(got, "sessions"), _column(got, "energy_kwh")
    assert 7 <= len(sessions) <= 8  # the days the range touches
    assert sum(sessions.values()) == len(_sessions_shown(fleet, sel))
    assert {t: v for t, v in sessions.items() if v} == dict(count)
    _approx({t: v for t, v in kwh.items() if v}, dict(energy))
    if sel["charger"] == "on3":
        assert max(sessions.values()) == 2  # s2 and s3 on one day, s2's superseded point not


#: (dashboard file, panel title or "variable NAME", refId) -> what the query must return.
EXPECTED: dict[tuple[str, str, str], Check] = {
    ("fleet-overview.json", "Chargers by state", "A"): check_states,
    ("fleet-overview.json", "Total power now", "A"): check_power_now,
    ("fleet-overview.json", "Readings stored (range)", "A"): check_count,
    ("fleet-overview.json", "Total power", "A"): check_total_power,
    ("fleet-overview.json", "Readings stored per second, by gateway", "A"): check_rate_by_gateway,
    ("fleet-overview.json", "Chargers (newest reading)", "A"): check_chargers_table,
    ("fleet-overview.json", "Total power, hourly (rollups)", "A"): check_hourly_total_power,
    ("charger-detail.json", "variable gateway", "-"): check_tag_values("gateway_id"),
    ("charger-detail.json", "variable charger", "-"): check_tag_values("charger_id"),
    ("charger-detail.json", "Status", "A"): check_status,
    ("charger-detail.json", "Newest reading", "A"): check_newest,
    ("charger-detail.json", "Energy delivered (range)", "A"): check_energy_spread,
    ("charger-detail.json", "Power now", "A"): check_power_now_of_charger,
    ("charger-detail.json", "Power", "A"): check_bucket_mean("power_w", "power_w"),
    ("charger-detail.json", "Energy register", "A"): check_energy_register,
    ("charger-detail.json", "Voltage per phase", "A"): check_phases("voltage", "v"),
    ("charger-detail.json", "Current per phase", "A"): check_phases("current", "a"),
    ("charger-detail.json", "State of charge", "A"): check_bucket_mean("soc_pct", "soc_pct"),
    ("charger-detail.json", "Temperature", "A"): check_bucket_mean(
        "temperature_c", "temperature_c"
    ),
    ("charger-detail.json", "Status timeline", "A"): check_status_timeline,
    ("charger-detail.json", "Power, hourly (rollups)", "A"): check_hourly_power,
    ("charger-detail.json", "Energy register, hourly (rollups)", "A"): check_hourly_energy,
    ("charger-detail.json", "Energy per session", "A"): check_energy_per_session,
    ("charger-detail.json", "Sessions per day", "A"): check_sessions_per_day,
    ("pipeline-health.json", "variable gateway", "-"): check_tag_values("gateway_id"),
    ("pipeline-health.json", "Seq span minus stored (range)", "A"): check_missing_in_range,
    ("pipeline-health.json", "Readings stored per second, by gateway", "A"): (
        check_rate_by_gateway
    ),
    ("pipeline-health.json", "Seq gap indicator, by gateway", "A"): check_gap_series,
    ("pipeline-health.json", "Newest stored reading, by gateway", "A"): (check_newest_per_gateway),
}

#: The variable selections each dashboard's queries run with (names from ``Fleet.names``).
SELECTIONS: dict[str, list[dict[str, str]]] = {
    "fleet-overview.json": [{}],
    "charger-detail.json": [
        {"gateway": ALL, "charger": "on3"},
        {"gateway": "b", "charger": "on1"},
    ],
    "pipeline-health.json": [{"gateway": ALL}, {"gateway": "b"}],
}


DASHBOARDS = load_dashboards()
QUERIES = influxql_queries(DASHBOARDS)
CASES = [
    pytest.param(
        (name, title, ref, query, selection),
        id=f"{name.removesuffix('.json')}:{title}:{ref}:{','.join(selection.values()) or '-'}",
    )
    for name, title, ref, query in QUERIES
    for selection in SELECTIONS[name]
]


def _relative(text: str) -> timedelta:
    """A panel's ``timeFrom`` (``7d``, ``24h``) as a duration."""
    n, unit = int(text[:-1]), text[-1]
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def _selection_values(fleet: Fleet, selection: dict[str, str]) -> dict[str, str]:
    return {k: v if v == ALL else fleet.names[v] for k, v in selection.items()}


# --- tests ----------------------------------------------------------------------------------


def test_every_influxql_query_is_checked() -> None:
    """Each InfluxQL query of every dashboard has an expectation here, and each expectation
    still matches a query (a renamed panel cannot silently drop out of the check)."""
    found = {(name, title, ref) for name, title, ref, _ in QUERIES}
    assert found == set(EXPECTED)
    assert len(QUERIES) >= 20
    assert set(SELECTIONS) == set(DASHBOARDS)


@pytest.mark.parametrize("case", CASES)
def test_dashboard_query(case: tuple[str, str, str, str, dict[str, str]], fleet: Fleet) -> None:
    """The query, prepared as Grafana prepares it for this selection, runs on InfluxDB and
    returns what the panel is meant to show for the stored readings."""
    name, title, ref, query, selection = case
    end = datetime.now(UTC)
    panel = next((p for p in panels(DASHBOARDS[name]) if p["title"] == title), {})
    # A panel with a relative time of its own (timeFrom) is queried over that range, as Grafana
    # does; the others over the dashboard's.
    span = _relative(panel["timeFrom"]) if "timeFrom" in panel else RANGE
    statement = prepare(
        query,
        DASHBOARDS[name],
        _selection_values(fleet, selection),
        start=end - span,
        end=end,
    )
    assert "$" not in statement.replace("$/", ""), f"unsubstituted variable in {statement}"
    series = _query(fleet.db, statement)
    assert series, f"no data for {title}: {statement}"
    EXPECTED[name, title, ref](series, fleet, selection)


def test_prepare_substitutes_like_grafana() -> None:
    """The emulation itself: constants and the custom All value as they are, a single value
    regex-escaped only inside a regex, the time filter in milliseconds and the interval in
    Grafana's duration format."""
    dashboard = DASHBOARDS["charger-detail.json"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=1)
    q = (
        "SELECT count(x) * 1000 / $__interval_ms FROM m WHERE g =~ /^$gateway$/ AND c = "
        "'$charger' AND time > now() - $online_window AND $timeFilter GROUP BY time($__interval)"
    )
    assert prepare(q, dashboard, {"gateway": "gw.1", "charger": "cp.1"}, start, end, 600) == (
        "SELECT count(x) * 1000 / 600000 FROM m WHERE g =~ /^gw\\.1$/ AND c = 'cp.1' "
        "AND time > now() - 5m AND time >= 1767225600000ms and time <= 1767229200000ms "
        "GROUP BY time(10m)"
    )
    all_gateways = prepare(q, dashboard, {"gateway": ALL, "charger": "cp.1"}, start, end)
    assert "=~ /^.*$/" in all_gateways
    assert "GROUP BY time(1m)" in all_gateways


def test_prometheus_panels_query_metrics_the_bridge_serves(fleet: Fleet) -> None:
    """Every telemetry_bridge_* metric a Prometheus panel queries is in the running bridge's
    /metrics exposition (the unit test checks the registry; this checks what is served)."""
    text = httpx.get(fleet.bridge_metrics_url, timeout=5).text
    served = set()
    # The text format names a counter's family with or without _total (client versions differ).
    suffixes = {"counter": ("", "_total"), "histogram": ("_bucket", "_count", "_sum")}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        served |= {name.removesuffix("_total") + s for s in suffixes.get(kind, ("",))}
    wanted = set()
    for dashboard in DASHBOARDS.values():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["uid"] == PROMETHEUS_UID:
                    wanted |= set(re.findall(r"\btelemetry_bridge_\w+", target["expr"]))
    assert len(wanted) >= 6
    assert wanted <= served, sorted(wanted - served)
    assert "telemetry_bridge_readings_stored_total " in text
