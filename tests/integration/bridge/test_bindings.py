"""Bindings an operator controls, end to end on real servers (broker, InfluxDB 1.x, a provisioned
bridge, the API): bound through the API a charger is accepted from its gateway only; moved with
PUT, the change reaches the running bridge within its refresh period; DELETE unbinds it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.settings import BridgeSettings
from query_api.settings import ApiSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_name
from telemetry_stack.servers import ManagedProcess
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.influx import influxql
from tests.support.processes import Procs, start_api, start_bridge
from tests.support.waiting import poll, wait_until

pytestmark = pytest.mark.integration

READ, ADMIN = "r" * 32, "a" * 32
REFRESH_S = 1.0


class Sender:
    """One gateway's readings for one charger, each with a new seq and a newer ts."""

    seqs = count(1)

    def __init__(self, client: mqtt.Client, broker: BrokerInfo, gateway: str, charger: str):
        self.client, self.topic = client, broker.topics.readings(gateway)
        self.gateway, self.charger = gateway, charger

    def send(self) -> int:
        seq = next(self.seqs)
        ts = datetime.now(UTC) - timedelta(minutes=5) + timedelta(milliseconds=seq)
        reading = {"charger_id": self.charger, "seq": seq, "ts": format_ts(ts), "values": {}}
        payload = {"gateway_id": self.gateway, "readings": [reading]}
        info = self.client.publish(self.topic, orjson.dumps(payload), qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
        return seq


def _stored(db: InfluxTarget, charger: str, gateway: str) -> set[int]:
    q = f"SELECT seq FROM readings WHERE charger_id = '{charger}' AND gateway_id = '{gateway}'"
    return {int(row[1]) for row in influxql(db.url, db.database, q)}


def _refused(db: InfluxTarget, gateway: str) -> list[str]:
    """The details of the charger_not_bound dead letters of ``gateway``, oldest first."""
    q = (
        "SELECT detail FROM deadletters "
        f"WHERE gateway_id = '{gateway}' AND reason = 'charger_not_bound'"
    )
    return [str(row[1]) for row in influxql(db.url, db.database, q)]


def _status(bridge: ManagedProcess) -> dict[str, object]:
    assert bridge.env is not None
    port = bridge.env[env_name(BridgeSettings, "http_port")]
    doc = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def api(procs: Procs, influx_db: InfluxTarget) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A ``telemetry-api`` on ``influx_db``: clients with its admin key and its read key."""
    url = start_api(procs, influx_db, READ, keys={"admin": ADMIN})
    with (
        httpx.Client(base_url=url, headers={"X-API-Key": ADMIN}, timeout=10) as admin,
        httpx.Client(base_url=url, headers={"X-API-Key": READ}, timeout=10) as reader,
    ):
        yield admin, reader


def test_an_operator_binds_moves_and_unbinds_a_charger(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    api: tuple[httpx.Client, httpx.Client],
) -> None:
    """PUT binds cp to gw-a: gw-a's reading is stored, gw-b's dead-lettered `charger_not_bound`.
    PUT moves it to gw-b: within the bridge's refresh period gw-b's readings are stored and
    gw-a's refused. DELETE unbinds it: both refused. A read key may list, not change (403)."""
    tag = uuid.uuid4().hex[:6]
    gw_a, gw_b, charger = f"gw-a-{tag}", f"gw-b-{tag}", f"cp-{tag}"
    admin, reader = api
    bridge = start_bridge(
        procs,
        broker,
        influx_db,
        extra_env={
            env_name(BridgeSettings, "bindings"): "provisioned",
            env_name(BridgeSettings, "bindings_refresh_s"): str(REFRESH_S),
        },
    )
    a = Sender(mqtt_client(gw_a), broker, gw_a, charger)
    b = Sender(mqtt_client(gw_b), broker, gw_b, charger)

    # Not bound yet: refused from anyone.
    refused = b.send()
    wait_until("the unbound charger refused", lambda: len(_refused(influx_db, gw_b)) == 1)
    assert "not provisioned" in _refused(influx_db, gw_b)[0]

    # The read key may not bind.
    denied = reader.put(f"/v1/bindings/{charger}", json={"gateway_id": gw_a})
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert reader.delete(f"/v1/bindings/{charger}").status_code == 403
    bad = admin.put(f"/v1/bindings/{charger}", json={"gateway_id": "gw a"})
    assert bad.status_code == 422

    put = admin.put(f"/v1/bindings/{charger}", json={"gateway_id": gw_a})
    assert put.status_code == 200, put.text
    assert put.json()["gateway_id"] == gw_a
    assert put.json()["previous"] is None
    wait_until("the bridge to load the binding", lambda: _status(bridge)["bindings"] == 1)
    status = _status(bridge)["bindings_store"]
    assert isinstance(status, dict)
    assert status["mode"] == "provisioned"
    assert status["from_store"] == 1

    stored_a = a.send()
    wait_until("gw-a's reading stored", lambda: _stored(influx_db, charger, gw_a) == {stored_a})
    b.send()
    wait_until("gw-b refused again", lambda: len(_refused(influx_db, gw_b)) == 2)
    assert gw_a in _refused(influx_db, gw_b)[1]

    listed = reader.get("/v1/bindings", params={"gateway_id": gw_a}).json()
    assert [(i["charger_id"], i["source"]) for i in listed["items"]] == [(charger, "store")]
    assert reader.get("/v1/bindings", params={"gateway_id": gw_b}).json()["items"] == []

    # Moved to gw-b: the running bridge picks it up within its refresh period.
    moved = admin.put(f"/v1/bindings/{charger}", json={"gateway_id": gw_b})
    assert moved.status_code == 200
    assert moved.json()["previous"] == gw_a
    sent_b: set[int] = set()

    def b_stored() -> bool:
        sent_b.add(b.send())
        return bool(_stored(influx_db, charger, gw_b) & sent_b)

    assert poll(b_stored, timeout=REFRESH_S + 10, interval=0.5), "gw-b's readings never stored"
    assert refused not in _stored(influx_db, charger, gw_b)
    before = len(_refused(influx_db, gw_a))
    a.send()
    wait_until("gw-a refused", lambda: len(_refused(influx_db, gw_a)) == before + 1)
    assert gw_b in _refused(influx_db, gw_a)[-1]
    assert _stored(influx_db, charger, gw_a) == {stored_a}
    got = reader.get(f"/v1/bindings/{charger}").json()
    assert (got["gateway_id"], got["previous"], got["changed_by"]) == (gw_b, gw_a, "api:admin")

    # Unbound: refused from both.
    assert admin.delete(f"/v1/bindings/{charger}").status_code == 204
    wait_until("the bridge to drop the binding", lambda: _status(bridge)["bindings"] == 0)
    stored_b = _stored(influx_db, charger, gw_b)
    before_b = len(_refused(influx_db, gw_b))
    b.send()
    wait_until("gw-b refused once unbound", lambda: len(_refused(influx_db, gw_b)) == before_b + 1)
    assert "not provisioned" in _refused(influx_db, gw_b)[-1]
    assert _stored(influx_db, charger, gw_b) == stored_b
    assert reader.get(f"/v1/bindings/{charger}").status_code == 404
    assert reader.get("/v1/bindings").json()["items"] == []


def test_the_api_lists_the_bridges_bindings_file_under_the_store(
    procs: Procs, influx_db: InfluxTarget, tmp_path: Path
) -> None:
    """With TELEMETRY_API_BINDINGS_FILE (the bridges' file, as compose mounts it) the API lists
    the file's bindings as `file`; a PUT overrides one (`store`), a DELETE hides one."""
    tag = uuid.uuid4().hex[:6]
    one, two, three = (f"cp-{n}-{tag}" for n in (1, 2, 3))
    path = tmp_path / "bindings.json"
    path.write_bytes(orjson.dumps({one: f"gw-{tag}", two: f"gw-{tag}", three: f"gw-{tag}"}))
    env = {env_name(ApiSettings, "bindings_file"): str(path)}
    url = start_api(procs, influx_db, READ, keys={"admin": ADMIN}, extra_env=env)
    with httpx.Client(base_url=url, headers={"X-API-Key": ADMIN}, timeout=10) as admin:
        assert admin.put(f"/v1/bindings/{one}", json={"gateway_id": f"gw-x-{tag}"}).is_success
        assert admin.delete(f"/v1/bindings/{two}").status_code == 204
        items = admin.get("/v1/bindings", params={"limit": 1000}).json()["items"]
        mine = [
            (i["charger_id"], i["gateway_id"], i["source"]) for i in items if tag in i["charger_id"]
        ]
        assert mine == [(one, f"gw-x-{tag}", "store"), (three, f"gw-{tag}", "file")]
        assert admin.get(f"/v1/bindings/{three}").json()["source"] == "file"
        assert admin.get(f"/v1/bindings/{two}").status_code == 404
