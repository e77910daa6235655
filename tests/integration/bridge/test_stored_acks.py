"""Stored acknowledgements on real servers: the bridge tells a gateway which seqs it stored or
dead-lettered, only once InfluxDB holds them (docs/design.md, "Stored acknowledgements")."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from telemetry_common.schema import format_ts
from tests.support.fault_proxy import FaultProxy
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

EPOCH = "0123456789abcdef"


def _reading(charger: str, seq: int, ts: datetime) -> dict[str, object]:
    return {"charger_id": charger, "seq": seq, "ts": format_ts(ts), "values": {"power_w": 1.0}}


def _batch(gateway: str, readings: list[dict[str, object]], epoch: str | None = EPOCH) -> bytes:
    body: dict[str, object] = {"gateway_id": gateway, "readings": readings}
    if epoch is not None:
        body["epoch"] = epoch
    return orjson.dumps(body)


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()


def _stored_seqs(db: InfluxTarget, gateway: str) -> set[int]:
    q = f"SELECT seq FROM readings WHERE gateway_id = '{gateway}'"
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=5)
    series = r.json()["results"][0].get("series", [])
    return {int(row[1]) for row in series[0]["values"]} if series else set()


def _deadletters(db: InfluxTarget, gateway: str) -> list[dict[str, Any]]:
    q = f"SELECT * FROM deadletters WHERE gateway_id = '{gateway}'"
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=5)
    series = r.json()["results"][0].get("series", [])
    if not series:
        return []
    cols = series[0]["columns"]
    return [dict(zip(cols, row, strict=True)) for row in series[0]["values"]]


class Acks:
    """A gateway's view of its stored topic: the seqs acknowledged per epoch, and when."""

    def __init__(self, client: mqtt.Client, topic: str) -> None:
        self.lock = threading.Lock()
        self.by_epoch: dict[str | None, set[int]] = {}
        self.messages = 0
        client.on_message = self._on_message
        client.subscribe(topic, qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with self.lock:
            self.messages += 1
            seqs = self.by_epoch.setdefault(body["epoch"], set())
            for first, last in body["seqs"]:
                seqs.update(range(first, last + 1))

    def seqs(self, epoch: str | None = EPOCH) -> set[int]:
        with self.lock:
            return set(self.by_epoch.get(epoch, set()))


def test_gateway_is_told_what_was_stored_and_what_was_dead_lettered(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """Seqs of stored readings and of dead-lettered ones (ts too old, a whole message refused)
    are acknowledged under the batch's epoch; an epoch-less batch under null; nothing else is
    acknowledged, and a gateway never sees another gateway's acknowledgements."""
    tag = uuid.uuid4().hex[:6]
    gw, other = f"gw-{tag}", f"gw-other-{tag}"
    now = datetime.now(UTC)
    client, other_client = mqtt_client(gw), mqtt_client(other)
    acks = Acks(client, broker.topics.stored(gw))
    snooped = Acks(other_client, broker.topics.stored(gw))  # the ACL must refuse delivery
    start_bridge(procs, broker, influx_db)
    topic = broker.topics.readings(gw)

    _publish(
        client,
        topic,
        _batch(gw, [_reading(f"cp-{tag}", s, now + timedelta(milliseconds=s)) for s in (1, 2, 3)]),
    )
    old = now - timedelta(days=3650)
    mixed = [
        _reading(f"cp-{tag}", 4, old),
        _reading(f"cp-{tag}", 5, now + timedelta(milliseconds=5)),
    ]
    _publish(client, topic, _batch(gw, mixed))
    # Refused as a whole (another gateway's id in the body): its seqs are dead-lettered with it.
    _publish(client, topic, _batch(other, [_reading(f"cp-{tag}", 6, now)]))
    nasty = b'{"x": "a \\" quote, a \\\\ backslash,\n a newline'  # invalid JSON
    _publish(client, topic, nasty)
    _publish(client, topic, _batch(gw, [_reading(f"cp2-{tag}", 7, now)], epoch=None))

    wait_until("seqs 1..6 acknowledged", lambda: acks.seqs() == {1, 2, 3, 4, 5, 6}, timeout=20)
    wait_until("the epoch-less seq acknowledged", lambda: acks.seqs(None) == {7}, timeout=20)
    assert _stored_seqs(influx_db, gw) == {1, 2, 3, 5, 7}
    time.sleep(1.5)  # a few more flushes: nothing else comes
    assert acks.seqs() == {1, 2, 3, 4, 5, 6}
    assert set(acks.by_epoch) == {EPOCH, None}
    assert snooped.messages == 0
    # The dead letters are durable: stored in InfluxDB (whole, here) before being acknowledged.
    stored = _deadletters(influx_db, gw)
    assert sorted(r["reason"] for r in stored) == [
        "gateway_mismatch",
        "invalid_json",
        "ts_too_old",
    ]
    by_reason = {r["reason"]: r for r in stored}
    assert base64.b64decode(by_reason["invalid_json"]["payload_b64"]) == nasty
    assert by_reason["ts_too_old"]["indexes"] == "[0]"  # one record per message
    [sent] = orjson.loads(base64.b64decode(by_reason["ts_too_old"]["payload_b64"]))
    assert sent["seq"] == 4


def test_nothing_is_acknowledged_while_influxdb_does_not_take_the_readings(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """With InfluxDB blackholed (behind a proxy), the batch is received but not stored: no
    acknowledgement comes. Once the link is back, the acknowledgement follows the write."""
    tag = uuid.uuid4().hex[:6]
    gw = f"gw-{tag}"
    url = urlsplit(influx_db.url)
    assert url.hostname is not None
    assert url.port is not None
    with FaultProxy(url.hostname, url.port) as proxy:
        proxied = InfluxTarget(f"http://127.0.0.1:{proxy.port}", influx_db.database)
        client = mqtt_client(gw)
        acks = Acks(client, broker.topics.stored(gw))
        start_bridge(procs, broker, proxied, extra_env={"TELEMETRY_BRIDGE_INFLUX__TIMEOUT_S": "1"})
        proxy.set(blackhole=True)
        now = datetime.now(UTC)
        _publish(client, broker.topics.readings(gw), _batch(gw, [_reading(f"cp-{tag}", 1, now)]))
        time.sleep(4)
        assert acks.seqs() == set()
        assert _stored_seqs(influx_db, gw) == set()
        proxy.set(blackhole=False)
        proxy.reset_all()
        wait_until("the acknowledgement after the write", lambda: acks.seqs() == {1}, timeout=60)
        assert _stored_seqs(influx_db, gw) == {1}


def test_a_busy_gateway_is_acknowledged_at_once_a_quiet_one_at_the_interval(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """With ACK_INTERVAL_S 10 and ACK_EAGER_READINGS 50, sent just after the bridge started:
    60 readings of one gateway are acknowledged right after their commit, while 2 of another
    wait for the interval."""
    tag = uuid.uuid4().hex[:6]
    busy, quiet = f"gw-busy-{tag}", f"gw-quiet-{tag}"
    busy_client, quiet_client = mqtt_client(busy), mqtt_client(quiet)
    busy_acks = Acks(busy_client, broker.topics.stored(busy))
    quiet_acks = Acks(quiet_client, broker.topics.stored(quiet))
    env = {"TELEMETRY_BRIDGE_ACK_INTERVAL_S": "10", "TELEMETRY_BRIDGE_ACK_EAGER_READINGS": "50"}
    start_bridge(procs, broker, influx_db, extra_env=env)
    now = datetime.now(UTC)
    few = [_reading(f"cp-q-{tag}", s, now + timedelta(milliseconds=s)) for s in (1, 2)]
    many = [_reading(f"cp-b-{tag}", s, now + timedelta(milliseconds=s)) for s in range(1, 61)]
    _publish(quiet_client, broker.topics.readings(quiet), _batch(quiet, few))
    _publish(busy_client, broker.topics.readings(busy), _batch(busy, many))
    wait_until("the busy gateway acknowledged", lambda: len(busy_acks.seqs()) == 60, timeout=5)
    assert quiet_acks.seqs() == set()  # its turn is the interval's
    wait_until("the quiet gateway acknowledged", lambda: quiet_acks.seqs() == {1, 2}, timeout=15)
