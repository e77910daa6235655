"""query_api as a process on the real pipeline: readings published by a gateway identity (or
POSTed to the API) go through Mosquitto and the real ``telemetry-bridge`` into InfluxDB; the API
(``telemetry-api``, connected to the broker as ``telemetry-api``) answers from its live mirror
and InfluxDB. Expected values are computed in Python from the same readings, or read from
InfluxDB directly.
"""

from __future__ import annotations

import math
import secrets
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from query_api.settings import ApiSettings
from telemetry_common.schema import Reading, encode_batch, format_ts
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.mqtt_recorder import NOT_AUTHORIZED, Recorder
from tests.support.processes import Procs, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ, INGEST, ADMIN = (secrets.token_urlsafe(18) for _ in range(3))
FAST = env_for(BridgeSettings, live_interval_s=0.2, gap_grace_s=1)


@dataclass
class Pipeline:
    api: str
    broker: BrokerInfo
    db: InfluxTarget
    gateway: str
    publisher: GatewayPublisher
    bridge_url: str

    def get(self, path: str, key: str = READ, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", params=params, headers={"X-API-Key": key}, timeout=10)

    def publish(self, readings: list[dict[str, Any]]) -> None:
        batch = [Reading.model_validate_json(orjson.dumps(r)) for r in readings]
        self.publisher.publish(encode_batch(self.gateway, batch))

    def stored(self, charger: str) -> int:
        rows = influxql(
            self.db.url,
            self.db.database,
            f"SELECT count(seq) FROM readings WHERE charger_id = '{charger}'",
        )
        return int(rows[0][1]) if rows else 0

    def wait_stored(self, charger: str, n: int) -> None:
        wait_until(f"{n} readings of {charger} in InfluxDB", lambda: self.stored(charger) >= n)


@pytest.fixture
def pipeline(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> Pipeline:
    """Bridge + API on the test database; a gateway identity to publish with."""
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    bridge_port = free_port()
    start_bridge(
        procs,
        broker,
        influx_db,
        extra_env=FAST | env_for(BridgeSettings, http_port=bridge_port),
    )
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    api = start_api(
        procs,
        influx_db,
        READ,
        broker=broker,
        keys={"ingest": INGEST, "admin": ADMIN},
        extra_env=env_for(
            ApiSettings,
            live_settle_s=0.5,
            ingest_gateway=f"http-{gateway}",
            bridge_urls=[bridge_url],
        ),
    )
    client = mqtt_client(gateway)
    return Pipeline(
        api, broker, influx_db, gateway, GatewayPublisher(client, broker.topics.readings(gateway)),
        bridge_url,
    )  # fmt: skip


def _reading(charger: str, ts: datetime, seq: int, **values: float) -> dict[str, Any]:
    return {"charger_id": charger, "ts": format_ts(ts), "seq": seq, "values": values}


#: Two hours ago, on a whole minute (so 10 s buckets start at T0).
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


# --- latest ---------------------------------------------------------------------------------


def test_latest_is_the_newest_stored_reading_and_a_late_one_does_not_replace_it(
    pipeline: Pipeline,
) -> None:
    """latest equals the newest stored reading, first from InfluxDB, then from the mirror once
    the live value settled; a late older reading is stored but latest stays the newest."""
    p = pipeline
    charger = f"{p.gateway}-cp1"
    p.publish(
        [_reading(charger, T0 + timedelta(seconds=i), i + 1, power_w=float(i)) for i in range(5)]
    )
    p.wait_stored(charger, 5)
    q = f"SELECT power_w, seq FROM readings WHERE charger_id = '{charger}' ORDER BY time DESC"
    newest = influxql(p.db.url, p.db.database, q + " LIMIT 1")[0]
    sources: list[str] = []

    def from_mirror() -> bool:
        body = p.get(f"/v1/chargers/{charger}/latest").json()
        assert body["seq"] == newest[2] == 5
        assert body["values"] == {"power_w": newest[1]}
        assert body["ts"] == format_ts(T0 + timedelta(seconds=4))
        sources.append(str(body["source"]))
        return sources[-1] == "mirror"

    wait_until("latest served from the mirror", from_mirror, timeout=15)
    p.publish([_reading(charger, T0 - timedelta(minutes=5), 6, power_w=99.0)])
    p.wait_stored(charger, 6)
    for _ in range(3):
        body = p.get(f"/v1/chargers/{charger}/latest").json()
        assert body["seq"] == 5
        assert body["values"] == {"power_w": 4.0}
    assert body["state"] == "offline"  # two hours old: beyond the offline threshold
    assert body["age_s"] > 7000


def test_a_newer_reading_shows_up_at_once(pipeline: Pipeline) -> None:
    """Right after a newer reading is stored, latest returns it (never older than InfluxDB),
    even while the mirror still holds the previous value."""
    p = pipeline
    charger = f"{p.gateway}-cp2"
    p.publish([_reading(charger, T0, 1, power_w=1.0)])
    wait_until(
        "mirror", lambda: p.get(f"/v1/chargers/{charger}/latest").json().get("source") == "mirror"
    )
    for i in range(2, 6):
        p.publish([_reading(charger, T0 + timedelta(seconds=i), i, power_w=float(i))])
        p.wait_stored(charger, i)
        assert p.get(f"/v1/chargers/{charger}/latest").json()["seq"] == i


def test_state_uses_the_gateway_last_will(
    pipeline: Pipeline, mqtt_client: MqttClientFactory
) -> None:
    """A fresh reading is online; the gateway's retained state offline makes it offline."""
    p = pipeline
    charger = f"{p.gateway}-cp3"
    p.publish([_reading(charger, datetime.now(UTC), 1, power_w=1.0)])
    p.wait_stored(charger, 1)
    assert p.get(f"/v1/chargers/{charger}/latest").json()["state"] == "online"
    gw = mqtt_client(p.gateway)
    info = gw.publish(
        p.broker.topics.state(p.gateway), b'{"state": "offline", "ts": "x"}', qos=1, retain=True
    )
    info.wait_for_publish(10)
    wait_until(
        "offline", lambda: p.get(f"/v1/chargers/{charger}/latest").json()["state"] == "offline"
    )
    listed = p.get("/v1/chargers", gateway=p.gateway, state="offline").json()
    assert [c["charger_id"] for c in listed["items"]] == [charger]
    gw.publish(p.broker.topics.state(p.gateway), b"", qos=1, retain=True).wait_for_publish(10)


# --- history, stats, fleet ------------------------------------------------------------------


def test_history_pages_return_every_point_exactly_once(pipeline: Pipeline) -> None:
    """Paging with a small limit over points where two connectors share timestamps returns each
    stored point once, oldest first, and the last page has no cursor."""
    p = pipeline
    charger = f"{p.gateway}-cp4"
    readings: list[dict[str, Any]] = []
    for i in range(23):
        for evse in (1, 2):
            r = _reading(charger, T0 + timedelta(seconds=i), len(readings) + 1, power_w=float(i))
            readings.append({**r, "evse_id": evse})
    p.publish(readings)
    p.wait_stored(charger, len(readings))
    seen: list[tuple[str, int]] = []
    params: dict[str, Any] = {
        "start": format_ts(T0 - timedelta(minutes=1)),
        "end": "now",
        "limit": 5,
        "fields": "power_w",
    }
    for _ in range(50):
        page = p.get(f"/v1/chargers/{charger}/history", **params).json()
        seen += [(pt["ts"], pt["evse_id"]) for pt in page["points"]]
        if not page.get("next_cursor"):
            break
        assert len(page["points"]) == 5
        params["cursor"] = page["next_cursor"]
    expected = [(r["ts"], r["evse_id"]) for r in readings]
    assert len(seen) == len(set(seen)) == len(expected)
    assert sorted(seen) == sorted(expected)
    assert [ts for ts, _ in seen] == sorted(ts for ts, _ in seen)
    # downsampled pages: 23 one-second points in 10 s buckets, one bucket per page
    params = {"start": format_ts(T0), "end": format_ts(T0 + timedelta(seconds=30)),
              "every": "10s", "agg": "count", "fields": "power_w", "limit": 1}  # fmt: skip
    counts = []
    for _ in range(10):
        page = p.get(f"/v1/chargers/{charger}/history", **params).json()
        counts += [pt["values"]["power_w"] for pt in page["points"]]
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    assert counts == [20.0, 20.0, 6.0]
    other = p.get(f"/v1/chargers/{charger}/history", cursor=params["cursor"], fields="soc_pct")
    assert other.status_code == 422


def test_stats_match_the_statistics_module(pipeline: Pipeline) -> None:
    """count, mean, median, stddev, min, max per field equal Python's on the same values."""
    p = pipeline
    charger = f"{p.gateway}-cp5"
    power = [7200.0, 7100.5, 0.0, 3650.25, 11000.0, 22.5, 7200.0, 3.0]
    soc = [10.0, 20.0, 35.5, 50.0]
    readings: list[dict[str, Any]] = []
    for i, w in enumerate(power):
        values: dict[str, float] = {"power_w": w} | ({"soc_pct": soc[i]} if i < len(soc) else {})
        readings.append(_reading(charger, T0 + timedelta(seconds=i), i + 1, **values))
    p.publish(readings)
    p.wait_stored(charger, len(readings))
    window = {"start": format_ts(T0 - timedelta(minutes=1)), "end": "now"}
    body = p.get(f"/v1/chargers/{charger}/stats", **window).json()
    assert set(body["fields"]) == {"power_w", "soc_pct"}
    cases: list[tuple[str, list[float]]] = [("power_w", power), ("soc_pct", soc)]
    for name, xs in cases:
        got = body["fields"][name]
        assert got["count"] == len(xs)
        assert math.isclose(got["mean"], statistics.mean(xs))
        assert math.isclose(got["median"], statistics.median(xs))
        assert math.isclose(got["stddev"], statistics.stdev(xs))
        assert got["min"] == min(xs)
        assert got["max"] == max(xs)
    only = p.get(f"/v1/chargers/{charger}/stats", fields="soc_pct,energy_wh", **window).json()
    assert set(only["fields"]) == {"soc_pct", "energy_wh"}
    assert only["fields"]["energy_wh"]["count"] == 0


def test_fleet_daily_counts_readings_per_status(pipeline: Pipeline) -> None:
    """Per status counts of one UTC day equal the readings sent for it; HTML on request. (The
    day is a recent one: readings older than the bridge's MAX_AGE_DAYS are dead-lettered.)"""
    p = pipeline
    day = (datetime.now(UTC) - timedelta(days=10)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    date = day.date().isoformat()
    statuses = ["Charging"] * 5 + ["Available"] * 3 + ["Faulted"] + [None] * 2
    readings = []
    for i, status in enumerate(statuses):
        r = _reading(f"{p.gateway}-cp{i % 3}", day + timedelta(hours=i), i + 1, power_w=1.0)
        readings.append(r | ({"status": status} if status else {}))
    readings.append(_reading(f"{p.gateway}-cp0", day + timedelta(days=1), 99, power_w=1.0))
    p.publish(readings)
    wait_until(
        "all stored",
        lambda: sum(p.stored(f"{p.gateway}-cp{i}") for i in range(3)) == len(readings),
    )
    body = p.get("/v1/fleet/daily", date=date).json()
    expected = Counter(s for s in statuses if s)
    assert body == {"date": date, "total": len(statuses),
                    "by_status": dict(expected), "no_status": 2}  # fmt: skip
    page = httpx.get(
        f"{p.api}/v1/fleet/daily",
        params={"date": date},
        headers={"X-API-Key": READ, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
        timeout=10,
    )
    assert page.headers["content-type"].startswith("text/html")
    assert "<td>Charging</td><td>5</td>" in page.text
    assert p.get("/v1/fleet/daily", date=date, format="html").text == page.text


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_round_trip(pipeline: Pipeline) -> None:
    """POSTed readings (batch, single and simple shapes) are numbered 1, 2, ... for the ingest
    gateway, and each answer 200 comes once InfluxDB holds them (asked right after the answer,
    no waiting); they come back from latest and the compatibility alias."""
    p = pipeline
    charger = f"http-{p.gateway}-cp1"
    now = datetime.now(UTC).replace(microsecond=0)

    def post(body: object, key: str = INGEST) -> httpx.Response:
        return httpx.post(
            f"{p.api}/v1/telemetry", json=body, headers={"X-API-Key": key}, timeout=30
        )

    batch = {"readings": [_reading(charger, now - timedelta(seconds=30 - i), 0, power_w=float(i))
                          for i in range(3)]}  # fmt: skip
    first = post(batch)
    assert first.status_code == 200, first.text
    assert p.stored(charger) == 3
    assert first.json()["gateway_id"] == f"http-{p.gateway}"
    assert [r["seq"] for r in first.json()["readings"]] == [1, 2, 3]
    single = post({"charger_id": charger, "ts": format_ts(now - timedelta(seconds=5)),
                   "values": {"power_w": 10.0}, "status": "Charging"})  # fmt: skip
    assert single.json()["first_seq"] == 4
    assert p.stored(charger) == 4
    simple = post({"chargerId": charger, "timestamp": format_ts(now),
                   "payload": {"power_w": 11.0, "status": "Finishing"}}, ADMIN)  # fmt: skip
    assert simple.status_code == 200, simple.text
    assert simple.json()["first_seq"] == 5
    seqs = influxql(p.db.url, p.db.database,
                    f"SELECT seq FROM readings WHERE gateway_id = 'http-{p.gateway}'")  # fmt: skip
    assert sorted(r[1] for r in seqs) == [1, 2, 3, 4, 5]
    latest = p.get(f"/v1/chargers/{charger}/latest").json()
    assert (latest["seq"], latest["status"], latest["values"]) == (
        5,
        "Finishing",
        {"power_w": 11.0},
    )
    compat = p.get(f"/telemetry/{charger}").json()
    assert compat == {"chargerId": charger, "timestamp": format_ts(now),
                      "payload": {"power_w": 11.0, "status": "Finishing"}}  # fmt: skip


def test_ingest_refuses_invalid_readings_and_wrong_roles(pipeline: Pipeline) -> None:
    """One invalid reading makes the request 422 with its index and nothing is published; a
    read key may not ingest (403), an ingest key may not read (403), no key is 401."""
    p = pipeline
    charger = f"http-{p.gateway}-cp2"
    now = datetime.now(UTC)
    body = [
        _reading(charger, now, 0, power_w=1.0),
        {"charger_id": "bad'id", "ts": format_ts(now), "values": {"power_w": 1.0}},
        _reading(charger, now + timedelta(days=1), 0, power_w=1.0),
        {"chargerId": charger, "timestamp": format_ts(now), "payload": {"Power": 1.0}},
    ]
    resp = httpx.post(f"{p.api}/v1/telemetry", json=body, headers={"X-API-Key": INGEST}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert sorted({e["index"] for e in resp.json()["errors"]}) == [1, 2, 3]
    for key, status in ((READ, 403), ("nope", 401)):
        r = httpx.post(
            f"{p.api}/v1/telemetry", json=body[:1], headers={"X-API-Key": key}, timeout=10
        )
        assert r.status_code == status
    assert p.get(f"/v1/chargers/{charger}/latest", key=INGEST).status_code == 403
    assert p.get("/v1/pipeline/status", key="").status_code == 401
    ok = httpx.post(
        f"{p.api}/v1/telemetry", json=body[0], headers={"X-API-Key": INGEST}, timeout=30
    )
    assert ok.json()["first_seq"] == 1  # the refused request used no seq
    assert p.stored(charger) == 1


# --- hostile input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/chargers/x';DROP DATABASE telemetry;--/latest", {}),
        ("/v1/chargers/a' OR 1=1 --/history", {}),
        ("/v1/chargers/cp/history", {"limit": 10**9}),
        ("/v1/chargers/cp/history", {"start": "-36500d"}),
        ("/v1/chargers/cp/history", {"start": "NaN"}),
        ("/v1/chargers/cp/history", {"limit": "NaN"}),
        ("/v1/chargers/cp/history", {"fields": 'power_w" FROM x; DROP'}),
        ("/v1/chargers/cp/history", {"fields": "seq"}),
        ("/v1/chargers/cp/history", {"cursor": "eyJrIjoiaGlzdG9yeSJ9"}),
        ("/v1/chargers/cp/stats", {"start": "-3650d"}),
        ("/v1/chargers/cp/stats", {"fields": "Robert'); DROP"}),
        ("/v1/chargers", {"gateway": "gw' OR '1'='1"}),
        ("/v1/chargers", {"limit": 10**9}),
        ("/v1/chargers", {"cursor": "////"}),
        ("/v1/fleet/daily", {"date": "2026-02-30"}),
        ("/v1/fleet/daily", {"date": "1' OR 1=1"}),
        ("/v1/gateways/gw;DROP/gaps", {}),
    ],
)
def test_hostile_parameters_are_422_and_the_database_is_intact(
    pipeline: Pipeline, path: str, params: dict[str, Any]
) -> None:
    """Hostile ids, huge limits and ranges, NaN, unknown fields and forged cursors are 422
    problems; the database and its data are still there afterwards."""
    p = pipeline
    charger = f"{p.gateway}-cp9"
    p.publish([_reading(charger, T0, 1, power_w=1.0)])
    p.wait_stored(charger, 1)
    resp = p.get(path, **params)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert p.stored(charger) == 1
    assert p.get(f"/v1/chargers/{charger}/latest").status_code == 200


# --- operations -----------------------------------------------------------------------------


def test_readiness_metrics_and_pipeline_status(pipeline: Pipeline) -> None:
    """/readyz is 200 with both dependencies up; /metrics has the latency histogram by route
    template; /v1/pipeline/status merges the bridge's /status."""
    p = pipeline
    wait_until("ready", lambda: httpx.get(f"{p.api}/readyz", timeout=5).status_code == 200)
    assert httpx.get(f"{p.api}/readyz", timeout=5).json()["checks"]["broker"]["ok"] is True
    p.get("/v1/chargers/cp-x/latest")
    text = httpx.get(f"{p.api}/metrics", timeout=5).text
    assert 'route="/v1/chargers/{charger_id}/latest"' in text
    assert "cp-x" not in text
    status = p.get("/v1/pipeline/status").json()
    assert status["bridges"][0]["url"] == p.bridge_url
    assert status["bridges"][0]["reachable"] is True
    # a jump in seq (3 -> 10) is a gap the bridge reports; it shows through the API
    charger = f"{p.gateway}-cp8"
    p.publish([_reading(charger, T0, 3, power_w=1.0)])
    p.publish([_reading(charger, T0 + timedelta(seconds=1), 10, power_w=1.0)])
    p.wait_stored(charger, 2)
    wait_until(
        "the gap through the API",
        lambda: any(
            g["first_seq"] == 4 and g["last_seq"] == 9
            for g in p.get(f"/v1/gateways/{p.gateway}/gaps").json()["gaps"]
        ),
    )


def test_api_works_degraded_without_a_broker(
    influx_db: InfluxTarget, broker: BrokerInfo, procs: Procs
) -> None:
    """With the broker unreachable the API starts, answers latest from InfluxDB, /readyz is 503
    naming the broker, and ingest is 503."""
    dead = BrokerInfo(tls_port=free_port(), local_port=free_port(), ca_file=broker.ca_file,
                      pki=broker.pki, service_port=free_port())  # fmt: skip
    api = start_api(procs, influx_db, READ, broker=dead, keys={"ingest": INGEST}, name="api-dead")
    line = (
        f"readings,charger_id=cp1,gateway_id=gw,evse_id=1,connector_id=1 power_w=5,seq=1i {10**18}"
    )
    httpx.post(
        f"{influx_db.url}/write", params={"db": influx_db.database}, content=line
    ).raise_for_status()
    latest = httpx.get(f"{api}/v1/chargers/cp1/latest", headers={"X-API-Key": READ}, timeout=10)
    assert latest.status_code == 200
    assert latest.json()["source"] == "influxdb"
    ready = httpx.get(f"{api}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "influxdb": {"ok": True},
        "broker": {"ok": False, "detail": "not connected"},
    }
    body = {"charger_id": "cp1", "ts": format_ts(datetime.now(UTC)), "values": {"power_w": 1.0}}
    resp = httpx.post(f"{api}/v1/telemetry", json=body, headers={"X-API-Key": INGEST}, timeout=10)
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"


def test_the_api_identity_has_only_what_it_needs(
    broker: BrokerInfo, mqtt_client: MqttClientFactory
) -> None:
    """The ACL lets telemetry-api read live/# and +/state and write +/readings; it cannot write
    the live, dead-letter, command or state topics, nor read other gateways' readings."""
    topics = broker.topics
    rec, control = Recorder(), Recorder()
    api = rec.attach(mqtt_client("telemetry-api"))
    assert rec.subscribe(api, f"{topics.root}/live/+") == [1]
    assert rec.subscribe(api, f"{topics.root}/+/state") == [1]
    # Mosquitto grants a wildcard SUBACK and filters each message by the ACL.
    rec.subscribe(api, topics.all_readings())
    bridge = control.attach(mqtt_client("telemetry-bridge"))
    control.subscribe(bridge, topics.all_readings())
    token = uuid.uuid4().hex.encode()
    gw_rec = Recorder()
    gw = gw_rec.attach(mqtt_client("gw-acl"))
    assert gw_rec.publish(gw, topics.readings("gw-acl"), token) < 0x80
    control.wait_for_payload(token)
    assert rec.publish(api, topics.readings("http-gw"), b"{}") < 0x80  # allowed: ingest
    time.sleep(0.5)  # the control got it; the API's copy would have arrived by now
    assert token not in rec.payloads()
    for topic in (
        topics.live("cp1"),
        topics.deadletter("gw-1"),
        topics.cmd("gw-1", "reboot"),
        topics.state("gw-1"),
    ):
        assert rec.publish(api, topic, b"{}") == NOT_AUTHORIZED, topic
