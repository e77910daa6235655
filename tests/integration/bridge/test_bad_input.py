"""Bad input never stalls the pipeline (docs/design.md guarantee 4), against one real
``telemetry-bridge`` process for the whole module, the real Mosquitto and InfluxDB 1.x.

Each case has a gateway and charger of its own and runs the same script: a valid reading
(seq 1) is stored and becomes the live value; the bad message is published; its dead letter
carries the expected machine-readable ``reason``; the next valid message (seq 10) is stored; and
the live feed of the charger only ever showed seq 1 then seq 10, so nothing from the bad message
became the live value. Where the bad message also holds a valid (older) reading, that one is
stored too.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.settings import BridgeSettings
from provisioning.broker_config import MAX_PACKET_SIZE
from telemetry_common.ids import is_valid_id
from telemetry_common.schema import MAX_BATCH_BYTES, SCHEMA_ID, format_ts
from telemetry_common.settings import env_for
from telemetry_common.storage import RAW_RP
from telemetry_stack.servers import free_port
from tests.support.fixtures import BrokerInfo, InfluxInfo, InfluxTarget, MqttClientFactory
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 20.0
PACKET_TOO_LARGE = 0x95
UNSPECIFIED_ERROR = 0x80


# --- helpers --------------------------------------------------------------------------------


def stored_seqs(db: InfluxTarget, gateway: str) -> list[int]:
    rows = influxql(db.url, db.database, f"SELECT seq FROM readings WHERE gateway_id = '{gateway}'")
    return sorted(int(row[1]) for row in rows)


def reading(charger: str, seq: int, ts: datetime | str, **values: float) -> dict[str, Any]:
    return {
        "charger_id": charger,
        "evse_id": 1,
        "connector_id": 1,
        "seq": seq,
        "ts": ts if isinstance(ts, str) else format_ts(ts),
        "status": "Charging",
        "values": values or {"energy_wh": 1000.0 + seq},
    }


def batch(gateway: str, readings: list[Any]) -> bytes:
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway, "readings": readings})


@dataclass
class Feed:
    """JSON bodies received on the live and dead-letter topics of one case."""

    live_topic: str
    dead_topic: str
    live: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with self.lock:
            (self.live if msg.topic == self.live_topic else self.dead).append(body)

    def live_seqs(self) -> list[int]:
        with self.lock:
            return [int(m["seq"]) for m in self.live]

    def dead_letters(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.dead)


@dataclass
class CaseEnv:
    broker: BrokerInfo
    db: InfluxTarget
    gateway: str
    charger: str
    feed: Feed
    base: datetime

    def at(self, seconds: float) -> datetime:
        return self.base + timedelta(seconds=seconds)


#: The raw retention of the module's database, as the rollup job sets it (RAW_RETENTION).
RAW_RETENTION = timedelta(days=30)


@pytest.fixture(scope="module")
def module_db(influxd: InfluxInfo) -> Iterator[InfluxTarget]:
    """A database for the whole module, its raw readings kept 30 days (autogen, as the rollup
    job sets it: the bridge's ``ts_too_old`` horizon), dropped at the end."""
    target = InfluxTarget(url=influxd.url, database=f"bad_input_{uuid.uuid4().hex[:8]}")
    for q in (
        f'CREATE DATABASE "{target.database}"',
        f'ALTER RETENTION POLICY "autogen" ON "{target.database}" '
        f"DURATION {RAW_RETENTION.days}d SHARD DURATION 1d",
    ):
        httpx.post(f"{influxd.url}/query", data={"q": q}, timeout=10).raise_for_status()
    yield target
    httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{target.database}"'}, timeout=10)


@pytest.fixture(scope="module")
def bridge_port() -> int:
    """The port of the module's bridge's operational endpoints (``/status``)."""
    return free_port()


@pytest.fixture(scope="module")
def shared_bridge(
    broker: BrokerInfo,
    module_db: InfluxTarget,
    bridge_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InfluxTarget]:
    """One telemetry-bridge for every case of the module, stopped by PID at the end."""
    procs = Procs(tmp_path_factory.mktemp("bad-input-logs"))
    try:
        # No live conflation: a wrong live value is published at once, never hidden by a newer.
        env = env_for(BridgeSettings, live_interval_s=0, http_port=bridge_port)
        start_bridge(procs, broker, module_db, extra_env=env)
        yield module_db
    finally:
        procs.stop_all()


@pytest.fixture
def case(
    request: pytest.FixtureRequest,
    broker: BrokerInfo,
    shared_bridge: InfluxTarget,
    mqtt_client: MqttClientFactory,
) -> CaseEnv:
    """A fresh gateway + charger, watched on its live and dead-letter topics, with reading
    seq 1 stored and live."""
    gateway = f"gw-bad-{uuid.uuid4().hex[:8]}"
    charger = f"{gateway}-cp001"
    feed = Feed(broker.topics.live(charger), broker.topics.deadletter(gateway))
    watcher = mqtt_client(None)
    subscribed = threading.Event()
    watcher.on_message = feed.on_message
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.subscribe([(feed.live_topic, 1), (feed.dead_topic, 1)])
    assert subscribed.wait(10), "no SUBACK"
    now = datetime.now(UTC) - timedelta(minutes=30)
    env = CaseEnv(broker, shared_bridge, gateway, charger, feed, now.replace(microsecond=0))
    pub = GatewayPublisher(mqtt_client(gateway), broker.topics.readings(gateway))
    pub.publish(batch(gateway, [reading(charger, 1, env.at(0))]))
    wait_until("the first live value", lambda: feed.live_seqs() == [1], WAIT_S)
    return env


def finish(env: CaseEnv, pub: GatewayPublisher, also_stored: list[int]) -> None:
    """Publish the next valid message and check what was stored and what went live."""
    time.sleep(0.2)  # room for a wrong live value (published within ~10 ms) to show up
    pub.publish(batch(env.gateway, [reading(env.charger, 10, env.at(3))]))
    wait_until("the next live value", lambda: len(env.feed.live_seqs()) >= 2, WAIT_S)
    assert env.feed.live_seqs() == [1, 10]
    assert stored_seqs(env.db, env.gateway) == sorted([1, 10, *also_stored])
    tags = influxql(
        env.db.url, env.db.database, 'SHOW TAG VALUES FROM readings WITH KEY = "charger_id"'
    )
    assert all(is_valid_id(str(row[1])) for row in tags), tags


# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A bad message: ``build(env)`` makes its payload; ``reason`` is the expected dead-letter
    reason; ``index`` the offending reading's index (None: the whole message); ``also_stored``
    the seq of valid readings in the same message that must be stored anyway."""

    build: Callable[[CaseEnv], bytes]
    reason: str
    index: int | None = None
    also_stored: tuple[int, ...] = ()


def _beside_good(bad: Callable[[CaseEnv], Any]) -> Callable[[CaseEnv], bytes]:
    """A batch of a valid reading (seq 2, older than the live one) and then a bad one."""

    def build(env: CaseEnv) -> bytes:
        return batch(env.gateway, [reading(env.charger, 2, env.at(-5)), bad(env)])

    return build


def _raw_beside_good(bad_json: Callable[[CaseEnv], bytes]) -> Callable[[CaseEnv], bytes]:
    """Like ``_beside_good`` for a bad reading that orjson cannot produce (raw JSON text)."""

    def build(env: CaseEnv) -> bytes:
        good = orjson.dumps(reading(env.charger, 2, env.at(-5)))
        head = orjson.dumps({"schema": SCHEMA_ID, "gateway_id": env.gateway})[:-1]
        return head + b',"readings":[' + good + b"," + bad_json(env) + b"]}"

    return build


def _with_value(token: bytes) -> Callable[[CaseEnv], bytes]:
    def bad_json(env: CaseEnv) -> bytes:
        return orjson.dumps(reading(env.charger, 3, env.at(2))).replace(
            b'"energy_wh":1003.0', b'"energy_wh":' + token
        )

    return bad_json


def _oversize(env: CaseEnv) -> bytes:
    readings, size, seq = [], 0, 100
    while size <= MAX_BATCH_BYTES + 40 * 1024:
        r = reading(env.charger, seq, env.at(2) + timedelta(milliseconds=seq))
        readings.append(r)
        size += len(orjson.dumps(r)) + 1
        seq += 1
    payload = batch(env.gateway, readings)
    assert MAX_BATCH_BYTES < len(payload) < MAX_PACKET_SIZE - 1024
    return payload


def _deep(env: CaseEnv) -> bytes:
    head = orjson.dumps({"schema": SCHEMA_ID, "gateway_id": env.gateway})[:-1]
    return head + b',"readings":[' + b"[" * 10_000 + b"]" * 10_000 + b"]}"


def _many(env: CaseEnv) -> bytes:
    payload = batch(env.gateway, [0] * 100_000)
    assert len(payload) <= MAX_BATCH_BYTES  # 100k readings that still fit the size limit
    return payload


def _hostile(char: str) -> Callable[[CaseEnv], dict[str, Any]]:
    """A reading whose charger id tries to add a tag (or a line) to the line protocol."""

    def bad(env: CaseEnv) -> dict[str, Any]:
        return reading(f"{env.charger}{char}gateway_id=x", 3, env.at(2))

    return bad


HOSTILE = {"comma": ",", "equals": "=", "space": " ", "newline": "\n", "quote": '"', "bslash": "\\"}

CASES: dict[str, Bad] = {
    "invalid_json": Bad(  # truncated
        lambda env: batch(env.gateway, [reading(env.charger, 3, env.at(2))])[:-10], "invalid_json"
    ),
    "not_utf8": Bad(
        lambda env: batch(env.gateway, [reading(env.charger, 3, env.at(2))]).replace(
            b"Charging", b"Charg\xff\xfeing"
        ),
        "invalid_json",
    ),
    "wrong_types_reading": Bad(
        _beside_good(
            lambda env: (
                reading(env.charger, 3, env.at(2))
                | {"seq": "3", "evse_id": "1", "values": {"power_w": "7200"}}
            )
        ),
        "invalid_reading",
        index=1,
        also_stored=(2,),
    ),
    "wrong_types_envelope": Bad(
        lambda env: orjson.dumps(
            {
                "schema": SCHEMA_ID,
                "gateway_id": env.gateway,
                "readings": {"0": reading(env.charger, 3, env.at(2))},
            }
        ),
        "invalid_envelope",
    ),
    "nan": Bad(_raw_beside_good(_with_value(b"NaN")), "invalid_json"),
    "1e309": Bad(
        _raw_beside_good(_with_value(b"1e309")), "invalid_reading", index=1, also_stored=(2,)
    ),
    "naive_ts": Bad(
        _beside_good(lambda env: reading(env.charger, 3, env.at(2).strftime("%Y-%m-%dT%H:%M:%S"))),
        "invalid_reading",
        index=1,
        also_stored=(2,),
    ),
    "ts_far_future": Bad(
        _beside_good(lambda env: reading(env.charger, 3, datetime.now(UTC) + timedelta(days=1))),
        "ts_in_future",
        index=1,
        also_stored=(2,),
    ),
    "ts_1970": Bad(
        _beside_good(
            lambda env: reading(env.charger, 3, datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC))
        ),
        "ts_too_old",
        index=1,
        also_stored=(2,),
    ),
    "ts_2000": Bad(
        _beside_good(lambda env: reading(env.charger, 3, datetime(2000, 1, 1, tzinfo=UTC))),
        "ts_too_old",
        index=1,
        also_stored=(2,),
    ),
    **{
        f"hostile_charger_id_{name}": Bad(
            _beside_good(_hostile(ch)),
            "invalid_reading",
            index=1,
            also_stored=(2,),
        )
        for name, ch in HOSTILE.items()
    },
    "gateway_mismatch": Bad(
        lambda env: batch(f"{env.gateway}-other", [reading(env.charger, 3, env.at(2))]),
        "gateway_mismatch",
    ),
    "oversize_under_packet_limit": Bad(_oversize, "payload_too_large"),
    "deep_nesting_10k": Bad(_deep, "invalid_json"),
    "readings_100k": Bad(_many, "invalid_envelope"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_message_is_dead_lettered_and_the_next_one_flows(
    name: str, case: CaseEnv, mqtt_client: MqttClientFactory
) -> None:
    """The bad message is dead-lettered once with its reason (and the offending reading's index
    for per-reading faults), valid readings beside it are stored, the next valid message is
    stored, no hostile id reaches InfluxDB, and the live value never came from the bad
    message."""
    bad = CASES[name]
    payload = bad.build(case)
    pub = GatewayPublisher(mqtt_client(case.gateway), case.broker.topics.readings(case.gateway))
    pub.publish(payload)
    wait_until("the dead letter", lambda: len(case.feed.dead_letters()) >= 1, WAIT_S)
    finish(case, pub, list(bad.also_stored))

    dead = case.feed.dead_letters()
    assert [d["reason"] for d in dead] == [bad.reason], dead
    record = dead[0]
    assert record["gateway_id"] == case.gateway
    assert record["topic"] == pub.topic
    assert record["index"] is None  # one record per message: a reading's index is in indexes
    assert record.get("indexes") == (None if bad.index is None else [bad.index])
    raw = base64.b64decode(record["payload_b64"])
    if bad.index is None:
        assert record["payload_bytes"] == len(payload)
        assert record["payload_truncated"] == (len(payload) > len(raw))
        assert payload.startswith(raw)
    else:
        assert record["count"] == 1
        assert [f["reason"] for f in record["faults"]] == [bad.reason]
        [sent] = orjson.loads(raw)  # the offending reading, as sent
        assert str(sent["seq"]) == "3"


def shard_starts(db: InfluxTarget) -> list[str]:
    """The start time of every shard of ``db``'s raw readings (SHOW SHARDS: a series per
    database; retention policy ``autogen``: ``keep`` holds the newest-stored state's points, all
    at time 0 in one shard starting 1969-12-29, whatever the readings' dates)."""
    r = httpx.get(f"{db.url}/query", params={"q": "SHOW SHARDS"}, timeout=10)
    r.raise_for_status()
    series = r.json()["results"][0].get("series") or []
    rows = [
        row
        for s in series
        if s["name"] == db.database
        for row in s["values"]
        if row[s["columns"].index("retention_policy")] == RAW_RP
    ]
    return sorted(str(row[4]) for row in rows)


def test_readings_dated_1970_and_2000_are_dead_lettered_and_create_no_shard(
    case: CaseEnv, mqtt_client: MqttClientFactory, bridge_port: int
) -> None:
    """A gateway whose clock reset sends readings dated 1970 and 2000, and one a little older
    than the raw retention (30 days here; InfluxDB would refuse or soon drop it), beside a good
    one: the three are dead-lettered (ts_too_old, one record with their indexes: the horizon is
    the raw retention the bridge read from InfluxDB, not the one-year fallback), nothing of them is
    stored, and InfluxDB gets no shard for them (SHOW SHARDS before and after: each would be
    one more shard)."""
    old = [
        datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime.now(UTC) - RAW_RETENTION - timedelta(days=2),
    ]
    before = shard_starts(case.db)
    assert before, "seq 1 is in a shard"
    body = [reading(case.charger, 2, case.at(-5))]
    body += [reading(case.charger, 3 + k, at) for k, at in enumerate(old)]
    pub = GatewayPublisher(mqtt_client(case.gateway), case.broker.topics.readings(case.gateway))
    pub.publish(batch(case.gateway, body))
    wait_until("the dead letter", lambda: len(case.feed.dead_letters()) >= 1, WAIT_S)
    finish(case, pub, [2])  # what is stored of the gateway: seqs 1, 2 and 10 only
    dead = case.feed.dead_letters()
    assert [(d["reason"], d["indexes"]) for d in dead] == [("ts_too_old", [1, 2, 3])], dead
    details = [f["detail"] for f in dead[0]["faults"]]
    assert len(details) == 3, dead
    assert all(f"{RAW_RETENTION.days} days" in d for d in details), dead
    after = shard_starts(case.db)
    # The good readings lie 30 minutes back: a shard for today's date at most (midnight UTC may
    # fall between seq 1 and seq 10), none for an old week.
    recent = format_ts(datetime.now(UTC) - timedelta(days=2))
    assert [s for s in after if s not in before and s < recent] == [], (before, after)
    assert not [start for start in after if start < "2020"], after
    status = httpx.get(f"http://127.0.0.1:{bridge_port}/status", timeout=10).json()
    assert status["ts_horizon"] == {
        "max_age_s": RAW_RETENTION.total_seconds(),
        "source": "retention",
    }


def test_packet_over_the_broker_limit_is_refused_by_the_broker(
    case: CaseEnv, mqtt_client: MqttClientFactory
) -> None:
    """A message far larger than Mosquitto's max_packet_size (the CONNACK announces it) never
    gets a PUBACK: the broker disconnects the gateway with reason 'Packet too large' (0x95), so
    nothing reaches the bridge and nothing is dead-lettered; the gateway's next valid message,
    on a new connection, is stored and the live value is unchanged meanwhile."""
    client = mqtt_client(case.gateway, connect=False)
    connacks: list[Properties | None] = []
    disconnects: list[int] = []
    connected = threading.Event()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        connacks.append(p)
        connected.set()

    def on_disconnect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        disconnects.append(rc.value)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    # No reconnect after the broker throws it out: the broker gives a gateway's connection the
    # gateway's id, so a reconnect racing the publisher below would take its session over.
    client.reconnect_delay_set(min_delay=120, max_delay=120)
    client.connect(case.broker.host, case.broker.tls_port)
    client.loop_start()
    assert connected.wait(10)
    assert getattr(connacks[0], "MaximumPacketSize", None) == MAX_PACKET_SIZE

    huge = batch(case.gateway, [reading(case.charger, 3, case.at(2))]) + b" " * (4 * 1024 * 1024)
    info = client.publish(case.broker.topics.readings(case.gateway), huge, qos=1)
    wait_until("the broker to disconnect the gateway", lambda: bool(disconnects), WAIT_S)
    # Mosquitto closes the connection after its DISCONNECT 'Packet too large'; paho reports that
    # reason when it reads the DISCONNECT first, else a write error on the closed socket.
    assert disconnects[0] in {PACKET_TOO_LARGE, UNSPECIFIED_ERROR}
    assert not info.is_published()
    # paho would resend the message on every reconnect (and be thrown out every time): stop it.
    client.disconnect()
    client.loop_stop()

    pub = GatewayPublisher(mqtt_client(case.gateway), case.broker.topics.readings(case.gateway))
    finish(case, pub, [])
    assert case.feed.dead_letters() == []
