"""Per-gateway limits and InfluxDB's cardinality refusals on real servers (issue 21): the
``telemetry-bridge`` process with Mosquitto and InfluxDB 1.6. A reading over a limit is
dead-lettered ``limit_exceeded`` and counted by limit; the other readings of the same message
and batch are stored; a restarted bridge does not take the chargers a gateway already has for
new ones; a write InfluxDB refuses for ``max-values-per-tag`` costs the messages that add the
refused series, in a bounded number of requests."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from processor.metrics import Metrics
from processor.outputs.influx import InfluxOutput
from telemetry_common.influx_write import V1Writer
from telemetry_common.schema import SCHEMA_ID, format_ts
from telemetry_common.settings import InfluxSettings, env_for
from telemetry_stack.servers import ManagedProcess, ServerBinaryMissing, free_port, start_influxd
from tests.integration.bridge.test_faults import Feed, stored, wait_stored, watch
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.processes import Procs, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 30.0
LIMIT = "telemetry_bridge_limit_exceeded_total"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def reading(
    charger: str,
    seq: int,
    ts: datetime,
    values: dict[str, float] | None = None,
    evse: int = 1,
    connector: int = 1,
) -> dict[str, Any]:
    return {
        "charger_id": charger,
        "evse_id": evse,
        "connector_id": connector,
        "seq": seq,
        "ts": format_ts(ts),
        "values": values if values is not None else {"power_w": 7.2},
    }


def batch(gateway: str, readings: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway, "readings": readings})


def base_time() -> datetime:
    now = datetime.now(UTC) - timedelta(minutes=10)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def prometheus(bridge: ManagedProcess) -> str:
    assert bridge.env is not None
    port = bridge.env["TELEMETRY_BRIDGE_HTTP_PORT"]
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def limit_count(bridge: ManagedProcess, limit: str) -> float:
    m = re.search(rf'^{LIMIT}{{limit="{limit}"}} (\S+)$', prometheus(bridge), re.M)
    return float(m.group(1)) if m else 0.0


def stored_seqs(db: InfluxTarget, gateway: str) -> list[int]:
    q = f"SELECT seq FROM readings WHERE gateway_id = '{gateway}'"
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=5)
    series = r.json()["results"][0].get("series", [])
    return sorted(int(row[1]) for row in series[0]["values"]) if series else []


def dead_reasons(feed: Feed, topic: str) -> list[str]:
    return [str(d["reason"]) for d in feed.on(topic)]


def limits_env(**limits: int) -> dict[str, str]:
    return env_for(
        BridgeSettings, live_interval_s=0, **{f"limit_{k}": v for k, v in limits.items()}
    )


def test_each_limit_trips_with_its_reason_and_count_and_the_rest_is_stored(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """One message over four limits (a 4th charger with a cap of 3 — hourly budget 3 —, a 4th
    value key with a cap of 3, evse 3 and connector 5 above 2 and 4): exactly those readings are
    dead-lettered ``limit_exceeded``, each limit counted once, and every other reading of the
    message is stored. Another gateway's chargers are not affected."""
    gw, other = unique("gw-lim"), unique("gw-ok")
    base = base_time()
    topic = broker.topics.deadletter(gw)
    feed = watch(mqtt_client, topic, broker.topics.deadletter(other))
    env = limits_env(
        chargers_per_gateway=3,
        new_chargers_per_hour=3,
        value_keys_per_charger=3,
        evse_id=2,
        connector_id=4,
    )
    bridge = start_bridge(procs, broker, influx_db, extra_env=env)
    pub = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)
    at = [base + timedelta(milliseconds=k) for k in range(20)]
    readings = [
        reading(f"{gw}-a", 1, at[1], {"k1": 1.0, "k2": 2.0}),
        reading(f"{gw}-b", 2, at[2]),
        reading(f"{gw}-c", 3, at[3]),
        reading(f"{gw}-d", 4, at[4]),  # a 4th charger: chargers_per_gateway
        reading(f"{gw}-a", 5, at[5], {"k3": 3.0, "k4": 4.0}),  # a 4th key: value_keys
        reading(f"{gw}-a", 6, at[6], evse=3),  # evse_id
        reading(f"{gw}-b", 7, at[7], connector=5),  # connector_id
        reading(f"{gw}-a", 8, at[8], {"k1": 8.0, "k3": 8.0}),
    ]
    pub.publish(batch(gw, readings))
    wait_until("4 dead letters", lambda: len(feed.on(topic)) >= 1 and stored(influx_db, gw)[0] >= 4)
    wait_until(
        "each limit counted",
        lambda: (
            sum(
                limit_count(bridge, k)
                for k in (
                    "chargers_per_gateway",
                    "value_keys_per_charger",
                    "evse_id",
                    "connector_id",
                )
            )
            == 4
        ),
        WAIT_S,
    )
    assert stored_seqs(influx_db, gw) == [1, 2, 3, 8]
    for limit in ("chargers_per_gateway", "value_keys_per_charger", "evse_id", "connector_id"):
        assert limit_count(bridge, limit) == 1, limit
    assert set(dead_reasons(feed, topic)) == {"limit_exceeded"}
    assert 'telemetry_bridge_deadletters_total{reason="limit_exceeded"} 4.0' in prometheus(bridge)

    # Another gateway is not held by this one's limits.
    opub = GatewayPublisher(mqtt_client(other), broker.topics.readings(other), WAIT_S)
    opub.publish(batch(other, [reading(f"{other}-{k}", k, at[k]) for k in range(1, 4)]))
    wait_stored(influx_db, other, 3)
    assert limit_count(bridge, "new_chargers_per_hour") == 0
    bridge.stop(timeout=20)


def test_the_hourly_budget_and_a_restart_that_keeps_known_chargers(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> None:
    """Budget 2 new chargers per hour, cap 10: a gateway's 3rd new charger is refused
    (``new_chargers_per_hour``) while its two known ones keep being stored. After a restart
    the two stored chargers are not new (seeded from what is stored): they are stored, and
    the new bridge's own budget admits two others, refusing the one after."""
    gw = unique("gw-hour")
    base = base_time()
    topic = broker.topics.deadletter(gw)
    feed = watch(mqtt_client, topic)
    env = limits_env(chargers_per_gateway=10, new_chargers_per_hour=2)
    bridge = start_bridge(procs, broker, influx_db, extra_env=env)
    pub = GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw), WAIT_S)

    def at(s: int) -> datetime:
        return base + timedelta(milliseconds=s)

    pub.publish(batch(gw, [reading(f"{gw}-{c}", s, at(s)) for s, c in ((1, "a"), (2, "b"))]))
    wait_stored(influx_db, gw, 2)
    pub.publish(batch(gw, [reading(f"{gw}-c", 3, at(3)), reading(f"{gw}-a", 4, at(4))]))
    wait_until("the refusal", lambda: len(feed.on(topic)) >= 1)
    wait_stored(influx_db, gw, 3)
    assert stored_seqs(influx_db, gw) == [1, 2, 4]
    assert dead_reasons(feed, topic) == ["limit_exceeded"]
    assert "new_chargers_per_hour" in str(feed.on(topic)[0]["detail"])
    assert limit_count(bridge, "new_chargers_per_hour") == 1
    assert bridge.stop(timeout=20) == 0

    again = start_bridge(procs, broker, influx_db, name="bridge-2", extra_env=env)
    readings = [
        reading(f"{gw}-a", 5, at(5)),
        reading(f"{gw}-b", 6, at(6)),
        reading(f"{gw}-d", 7, at(7)),
        reading(f"{gw}-e", 8, at(8)),
        reading(f"{gw}-f", 9, at(9)),
    ]
    pub.publish(batch(gw, readings))
    wait_until("the second refusal", lambda: len(feed.on(topic)) >= 2)
    wait_stored(influx_db, gw, 7)
    assert stored_seqs(influx_db, gw) == [1, 2, 4, 5, 6, 7, 8]
    assert limit_count(again, "new_chargers_per_hour") == 1
    assert f"'{gw}-f'" in str(feed.on(topic)[1]["detail"])
    again.stop(timeout=20)


# --- InfluxDB's own cardinality limits ------------------------------------------------------

MAX_VALUES_PER_TAG = 20


def _influx_with(tmp_path: Path, limits: dict[str, int]) -> Iterator[InfluxTarget]:
    port = free_port()
    try:
        proc = start_influxd(tmp_path / "influxd", port, data_limits=limits)
    except ServerBinaryMissing as exc:
        pytest.skip(str(exc))
    try:
        url = f"http://127.0.0.1:{port}"
        httpx.post(f"{url}/query", data={"q": 'CREATE DATABASE "telemetry"'}, timeout=10)
        yield InfluxTarget(url=url, database="telemetry")
    finally:
        proc.stop(timeout=15)


@pytest.fixture
def low_cardinality_influx(tmp_path: Path) -> Iterator[InfluxTarget]:
    """An InfluxDB 1.6 of one test with ``max-values-per-tag`` 20 and its database."""
    yield from _influx_with(tmp_path, {"max-values-per-tag": MAX_VALUES_PER_TAG})


@pytest.fixture
def low_series_influx(tmp_path: Path) -> Iterator[InfluxTarget]:
    """An InfluxDB 1.6 of one test with ``max-series-per-database`` 30 and its database."""
    yield from _influx_with(tmp_path, {"max-series-per-database": 30})


class CountingWriter(V1Writer):
    """The real v1 writer, counting its requests."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self.requests = 0

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        self.requests += 1
        await super().write(lines, rp=rp)


def line(gateway: str, charger: str, seq: int) -> str:
    return (
        f"readings,charger_id={charger},connector_id=1,evse_id=1,gateway_id={gateway} "
        f"seq={seq}i {1_700_000_000_000_000_000 + seq}"
    )


def test_a_max_values_per_tag_refusal_costs_the_message_not_a_bisection(
    low_cardinality_influx: InfluxTarget,
) -> None:
    """InfluxDB at its 20 ``charger_id`` values (it checks the count before a request, so a
    request may overshoot, not one after); a batch of 40 messages of 10 readings: 38 of 20 known
    chargers, two of 10 new chargers each. The refusal (a partial write: the other points are
    stored) is recognised; the two messages come back refused whole with InfluxDB's reason,
    every other line is stored, and it takes at most 1 + 2 x 2 x log2(40) requests (the
    bisection of lines took about two per refused line: ~40)."""
    db = low_cardinality_influx
    settings = InfluxSettings(url=db.url, database=db.database)

    async def go() -> tuple[dict[str, str], int, list[str]]:
        writer = CountingWriter(settings)
        out = InfluxOutput(writer, Metrics())
        try:
            assert await out.write([line("gw-k", f"cp-{k}", k) for k in range(20)]) == {}
            writer.requests = 0
            lines, groups = [], []
            for m in range(40):
                if m in (7, 29):
                    group = [line(f"gw-bad{m}", f"new-{m}-{k}", 1000 + k) for k in range(10)]
                else:
                    group = [line("gw-k", f"cp-{k}", 100 * (m + 1) + k) for k in range(20)]
                lines += group
                groups.append(len(group))
            refused = await out.write(lines, groups=groups)
            return refused, writer.requests, lines
        finally:
            await writer.aclose()

    refused, requests, lines = asyncio.run(go())
    bad = {x for x in lines if "gw-bad" in x}
    assert len(bad) == 20
    assert set(refused) == bad
    assert all("max-values-per-tag limit exceeded" in why for why in refused.values())
    print(f"write requests for 40 messages, 2 refused for cardinality: {requests}")
    assert requests <= 1 + 2 * 2 * 6, requests
    count = httpx.get(
        f"{db.url}/query",
        params={
            "db": db.database,
            "q": "SELECT count(seq) FROM readings WHERE gateway_id = 'gw-k'",
        },
        timeout=10,
    ).json()["results"][0]["series"][0]["values"][0][1]
    assert count == 20 + 38 * 20


def test_a_max_series_refusal_spares_another_gateways_new_charger(
    low_series_influx: InfluxTarget,
) -> None:
    """InfluxDB at 25 of its 30 series refuses *every* new series of a request that would
    exceed it (all or nothing per request): a batch of 10 messages, 8 of known chargers, one of
    10 new chargers and one of another gateway's 2 new chargers. The bisection by message
    separates them: the 10 are refused (``max-series-per-database``), the other gateway's 2
    new chargers are stored with everything else, in a bounded number of requests."""
    db = low_series_influx
    settings = InfluxSettings(url=db.url, database=db.database)

    async def go() -> tuple[dict[str, str], int, list[str]]:
        writer = CountingWriter(settings)
        out = InfluxOutput(writer, Metrics())
        try:
            assert await out.write([line("gw-k", f"cp-{k}", k) for k in range(25)]) == {}
            writer.requests = 0
            lines, groups = [], []
            for m in range(10):
                if m == 3:
                    group = [line("gw-bad", f"new-{k}", 1000 + k) for k in range(10)]
                elif m == 4:
                    group = [line("gw-new", f"fresh-{k}", 2000 + k) for k in range(2)]
                else:
                    group = [line("gw-k", f"cp-{k}", 100 * (m + 1) + k) for k in range(25)]
                lines += group
                groups.append(len(group))
            return await out.write(lines, groups=groups), writer.requests, lines
        finally:
            await writer.aclose()

    refused, requests, lines = asyncio.run(go())
    assert set(refused) == {x for x in lines if "gw-bad" in x}
    assert all("max-series-per-database limit exceeded" in why for why in refused.values())
    print(f"write requests for 10 messages, 1 refused for series: {requests}")
    assert requests <= 1 + 2 * 4, requests
    q = "SELECT count(seq) FROM readings WHERE gateway_id='gw-new' OR gateway_id='gw-k'"
    r = httpx.get(f"{db.url}/query", params={"db": db.database, "q": q}, timeout=10)
    assert r.json()["results"][0]["series"][0]["values"][0][1] == 25 + 8 * 25 + 2


def test_a_cardinality_refusal_through_the_bridge_dead_letters_limit_exceeded(
    broker: BrokerInfo,
    low_cardinality_influx: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
) -> None:
    """Through the bridge, with InfluxDB's ``max-values-per-tag`` at 20 and reached: a
    gateway's message of 30 new chargers (the bridge's own limits off) is refused by InfluxDB;
    its readings are dead-lettered ``limit_exceeded`` naming ``influx_max_values_per_tag`` and
    counted, while another gateway's readings of the same moment, of known chargers, are
    stored."""
    db = low_cardinality_influx
    good, bad = unique("gw-good"), unique("gw-bad")
    base = base_time()
    topic = broker.topics.deadletter(bad)
    feed = watch(mqtt_client, topic)
    env = limits_env(chargers_per_gateway=0, new_chargers_per_hour=0) | env_for(
        BridgeSettings, batch_max_messages=50, batch_max_wait_s=0.5
    )
    bridge = start_bridge(procs, broker, db, extra_env=env)
    gpub = GatewayPublisher(mqtt_client(good), broker.topics.readings(good), WAIT_S)
    bpub = GatewayPublisher(mqtt_client(bad), broker.topics.readings(bad), WAIT_S)
    gpub.publish(batch(good, [reading(f"{good}-{k}", k, base) for k in range(1, 21)]))
    wait_stored(db, good, 20)  # InfluxDB now holds its 20 charger_id values
    at = [base + timedelta(milliseconds=k) for k in range(100)]
    bpub.publish(batch(bad, [reading(f"{bad}-{k}", k, at[k]) for k in range(1, 31)]))
    gpub.publish(batch(good, [reading(f"{good}-{k}", 20 + k, at[k]) for k in range(1, 21)]))
    wait_stored(db, good, 40)
    wait_until(
        "the refusal counted",
        lambda: limit_count(bridge, "influx_max_values_per_tag") > 0,
        WAIT_S,
    )
    time.sleep(0.5)
    dead = feed.on(topic)
    assert dead
    assert {d["reason"] for d in dead} == {"limit_exceeded"}
    assert all("influx_max_values_per_tag" in str(d["detail"]) for d in dead)
    refused = limit_count(bridge, "influx_max_values_per_tag")
    assert refused == 30
    assert stored_seqs(db, good) == list(range(1, 41))
    assert stored(db, bad) == (0, 0)
    bridge.stop(timeout=20)
