"""HTTP ingest on the end-to-end guarantee (issue 16), on real servers: Mosquitto, InfluxDB 1.x,
the real ``telemetry-bridge`` (which acknowledges what it stored on ``{root}/{gw}/stored``) and
``telemetry-api`` processes. ``POST /v1/telemetry`` answers 200 only once every reading is
stored (or dead-lettered), 503 with Retry-After otherwise, and an ``Idempotency-Key`` makes a
retry reuse the seqs of its first attempt.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from query_api.settings import ApiSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for
from tests.support.fault_proxy import FaultProxy
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory, TestPki
from tests.support.influx import influxql
from tests.support.own_broker import OwnBroker
from tests.support.processes import Procs, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ, INGEST = (secrets.token_urlsafe(18) for _ in range(2))
FAST = env_for(BridgeSettings, ack_interval_s=0.2, gap_grace_s=1)


@pytest.fixture
def own_broker(pki: TestPki, tmp_path: Path) -> Iterator[OwnBroker]:
    b = OwnBroker(pki, tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def _api(
    procs: Procs,
    broker: BrokerInfo,
    db: InfluxTarget,
    gateway: str,
    tmp_path: Path,
    *,
    name: str = "api",
    timeout_s: float = 3.0,
) -> str:
    return start_api(
        procs,
        db,
        READ,
        broker=broker,
        keys={"ingest": INGEST},
        name=name,
        extra_env=env_for(
            ApiSettings,
            ingest_gateway=gateway,
            ingest_stored_timeout_s=timeout_s,
            ingest_retry_after_s=1,
            ingest_seq_file=tmp_path / "api" / "ingest-seq.json",
        ),
    )


def _readings(charger: str, base: datetime, n: int) -> list[dict[str, Any]]:
    return [
        {
            "charger_id": charger,
            "ts": format_ts(base + timedelta(milliseconds=i)),
            "values": {"power_w": float(i)},
        }
        for i in range(n)
    ]


def _post(api: str, body: object, key: str | None = None, timeout: float = 30) -> httpx.Response:
    headers = {"X-API-Key": INGEST} | ({"Idempotency-Key": key} if key else {})
    return httpx.post(f"{api}/v1/telemetry", json=body, headers=headers, timeout=timeout)


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _stored(db: InfluxTarget, gateway: str) -> list[tuple[str, datetime, int]]:
    """(charger, ts, seq) of every point of ``gateway``."""
    rows = influxql(
        db.url,
        db.database,
        f"SELECT charger_id, seq FROM readings WHERE gateway_id = '{gateway}'",
    )
    return [(str(r[1]), _time(r[0]), int(r[2])) for r in rows]


def _gaps(api: str, gateway: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{api}/v1/gateways/{gateway}/gaps", headers={"X-API-Key": READ}, timeout=10)
    gaps: list[dict[str, Any]] = resp.json()["gaps"]
    return gaps


def test_no_bridge_subscribed_is_503_at_once(
    own_broker: OwnBroker, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """On a broker where no bridge ever subscribed, the broker answers PUBACK 0x10 (no matching
    subscribers): 503 broker-unavailable with Retry-After at once, not success; the seqs are
    given back (the next request, once a bridge runs, is numbered from 1)."""
    gateway = f"http-{uuid.uuid4().hex[:6]}"
    api = _api(procs, own_broker.info, influx_db, gateway, tmp_path, timeout_s=20)
    wait_until("ready", lambda: httpx.get(f"{api}/readyz", timeout=5).status_code == 200)
    body = _readings(f"{gateway}-cp1", datetime.now(UTC) - timedelta(minutes=1), 2)
    started = time.monotonic()
    resp = _post(api, body, "key-no-bridge-1")
    assert resp.status_code == 503, resp.text
    assert time.monotonic() - started < 5  # not the 20 s stored timeout
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["type"].endswith(":broker-unavailable")
    assert "0x10" in resp.json()["detail"]
    assert resp.headers["retry-after"] == "1"
    start_bridge(procs, own_broker.info, influx_db, extra_env=FAST)
    again = _post(api, body, "key-no-bridge-1")
    assert again.status_code == 200, again.text
    assert again.json()["first_seq"] == 1
    assert sorted(s for _, _, s in _stored(influx_db, gateway)) == [1, 2]


def test_bridge_down_is_503_after_the_timeout_and_the_keyed_retry_stores_once(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """With the bridge stopped (its session keeps the subscription, so the broker takes the
    batch) the request is 503 not-stored with Retry-After after INGEST_STORED_TIMEOUT_S. Once
    the bridge is back, the retry with the same Idempotency-Key gets 200 with the same seqs, and
    InfluxDB holds each reading once with that seq; other readings under the key are 422; after
    an API restart the key still gives the same answer (without publishing); a new request
    continues the numbering: no gap."""
    gateway = f"http-{uuid.uuid4().hex[:6]}"
    client_id, group = f"bridge-{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    bridge = start_bridge(
        procs, broker, influx_db, client_id=client_id, share_group=group, extra_env=FAST
    )
    api = _api(procs, broker, influx_db, gateway, tmp_path, timeout_s=2)
    wait_until("ready", lambda: httpx.get(f"{api}/readyz", timeout=5).status_code == 200)
    base = datetime.now(UTC) - timedelta(minutes=5)
    warm = _post(api, _readings(f"{gateway}-cp0", base, 1))
    assert (warm.status_code, warm.json()["first_seq"]) == (200, 1)
    bridge.stop()
    body = _readings(f"{gateway}-cp1", base, 3)
    started = time.monotonic()
    resp = _post(api, body, "key-bridge-down")
    waited = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert 2 <= waited < 8
    assert resp.json()["type"].endswith(":not-stored")
    assert resp.headers["retry-after"] == "1"
    start_bridge(procs, broker, influx_db, name="bridge-2", client_id=client_id,
                 share_group=group, extra_env=FAST)  # fmt: skip
    retry = _post(api, body, "key-bridge-down")
    assert retry.status_code == 200, retry.text
    assert [r["seq"] for r in retry.json()["readings"]] == [2, 3, 4]
    stored = _stored(influx_db, gateway)
    assert sorted(s for _, _, s in stored) == [1, 2, 3, 4]
    other = _post(api, _readings(f"{gateway}-cp1", base, 2), "key-bridge-down")
    assert other.status_code == 422
    assert other.json()["type"].endswith(":idempotency-key-mismatch")
    procs.started[1].stop()  # the API (started after the first bridge)
    api = _api(procs, broker, influx_db, gateway, tmp_path, name="api-2")
    again = _post(api, body, "key-bridge-down")
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == retry.json()
    after = _post(api, _readings(f"{gateway}-cp2", base, 1))
    assert after.json()["first_seq"] == 5
    assert sorted(s for _, _, s in _stored(influx_db, gateway)) == [1, 2, 3, 4, 5]
    time.sleep(2)  # the bridge's gap check (GAP_GRACE_S = 1) has run
    assert _gaps(api, gateway) == []


@dataclass
class Client:
    """One HTTP client sending its requests one after the other, each retried with its key
    until it gets a 2xx (bounded)."""

    api: str
    charger: str
    answered: dict[str, list[int]] = field(default_factory=dict)  # key -> seqs
    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # problem type (or error) -> count
    since: float | None = None  # when the attempt in flight was sent (monotonic)

    def run(self, requests: int, base: datetime, stop: threading.Event) -> None:
        for i in range(requests):
            key = f"{self.charger}-req-{i:04d}"
            body = _readings(self.charger, base + timedelta(seconds=i), 4)
            self.sent[key] = body
            for _ in range(60):
                if stop.is_set():
                    return
                self.attempts += 1
                self.since = time.monotonic()
                try:
                    resp = _post(self.api, body, key, timeout=20)
                except httpx.HTTPError as exc:
                    self._failed(type(exc).__name__)
                    time.sleep(0.5)
                    continue
                finally:
                    self.since = None
                if resp.status_code == 200:
                    self.answered[key] = [r["seq"] for r in resp.json()["readings"]]
                    break
                assert resp.status_code in (409, 503), resp.text
                assert "retry-after" in resp.headers
                self._failed(resp.json()["type"].rsplit(":", 1)[-1])
                time.sleep(0.5)
            else:
                raise AssertionError(f"{key}: no 2xx after 60 attempts")

    def _failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def test_ingest_during_a_broker_restart_stores_every_answered_reading_once(
    own_broker: OwnBroker, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """Issue 16: HTTP ingest during a broker restart. Three clients send requests (each with its
    own Idempotency-Key, retried on 503 or 409 with the same key) while the broker is stopped
    for 3.5 s and started again, twice, each time while every client's request waits for its
    acknowledgement (the bridge writes through a link that delays each chunk by 0.5 s): those
    published requests time out (503 not-stored) and are retried. Every 200 answer's readings
    are stored with the answered seqs, and retried requests stored each reading once with one
    seq: InfluxDB holds exactly the answered readings, their seqs are 1..N, and the bridge
    reports no gap. (Without the key's seqs a retry's new seqs replace the first attempt's, and
    this fails.)"""
    gateway = f"http-{uuid.uuid4().hex[:6]}"
    info = own_broker.info
    url = urlsplit(influx_db.url)
    assert url.hostname is not None
    assert url.port is not None
    with FaultProxy(url.hostname, url.port) as proxy:
        slow = InfluxTarget(f"http://127.0.0.1:{proxy.port}", influx_db.database)
        start_bridge(procs, info, slow, extra_env=FAST)
        api = _api(procs, info, influx_db, gateway, tmp_path, timeout_s=3)
        wait_until("ready", lambda: httpx.get(f"{api}/readyz", timeout=5).status_code == 200)
        proxy.set(latency_s=0.5)
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        clients = [Client(api, f"{gateway}-cp{i}") for i in range(3)]
        stop = threading.Event()
        per_client = 12

        def all_waiting(answers: int) -> Callable[[], bool]:
            def check() -> bool:
                now = time.monotonic()
                sent = [c.since for c in clients]
                return sum(len(c.answered) for c in clients) >= answers and all(
                    t is not None and now - t > 0.3 for t in sent
                )

            return check

        with ThreadPoolExecutor(len(clients)) as pool:
            running = [pool.submit(c.run, per_client, base, stop) for c in clients]
            try:
                for answers in (3, 18):
                    wait_until(f"{answers} answers, every client waiting", all_waiting(answers))
                    own_broker.stop()
                    time.sleep(3.5)  # beyond INGEST_STORED_TIMEOUT_S: the waiting requests fail
                    own_broker.start()
                for future in running:
                    future.result(timeout=240)
            finally:
                stop.set()
        proxy.set(latency_s=0)
        # at least each client's request in flight at each stop: published, then timed out
        timed_out = sum(c.failures.get("not-stored", 0) for c in clients)
        assert timed_out >= 3, [c.failures for c in clients]
        expected: dict[tuple[str, datetime], int] = {}
        for c in clients:
            assert len(c.answered) == per_client
            for key, seqs in c.answered.items():
                for reading, seq in zip(c.sent[key], seqs, strict=True):
                    expected[(c.charger, _time(reading["ts"]))] = seq
        stored = _stored(influx_db, gateway)
        got = {(charger, ts): seq for charger, ts, seq in stored}
        assert len(stored) == len(got) == len(expected) == 3 * per_client * 4
        assert got == expected
        assert sorted(got.values()) == list(range(1, len(expected) + 1))
        time.sleep(2)  # the bridge's gap check (GAP_GRACE_S = 1) has run
        assert _gaps(api, gateway) == []


def test_dead_lettered_readings_are_handled_and_named_in_the_answer(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """Readings the bridge dead-letters (ts beyond MAX_AGE_DAYS; a charger bound to another
    gateway) are acknowledged as handled: the answer is 200 right away, and names them in
    ``not_stored``; the valid one beside them is stored."""
    gateway = f"http-{uuid.uuid4().hex[:6]}"
    edge = f"gw-{uuid.uuid4().hex[:6]}"
    start_bridge(procs, broker, influx_db, extra_env=FAST)
    api = _api(procs, broker, influx_db, gateway, tmp_path)
    now = datetime.now(UTC) - timedelta(minutes=1)
    taken = f"{edge}-cp1"  # bound to the edge gateway by its first reading
    first = {"charger_id": taken, "seq": 1, "ts": format_ts(now), "values": {"power_w": 1.0}}
    batch = {"gateway_id": edge, "readings": [first]}
    info = mqtt_client(edge).publish(broker.topics.readings(edge), orjson.dumps(batch), qos=1)
    info.wait_for_publish(10)
    wait_until("the edge reading stored", lambda: _stored(influx_db, edge) != [])
    body = [
        *_readings(f"{gateway}-cp1", now, 1),
        *_readings(f"{gateway}-cp1", now - timedelta(days=400), 1),
        *_readings(taken, now + timedelta(seconds=1), 1),
    ]
    resp = _post(api, body)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["accepted"], resp.json()["stored"], resp.json()["not_stored"]) == (
        3,
        1,
        [1, 2],
    )
    assert [s for _, _, s in _stored(influx_db, gateway)] == [resp.json()["first_seq"]]


def test_the_answer_comes_only_once_influxdb_holds_the_readings(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """The bridge writes to InfluxDB through a link that delays each chunk by 1 s: the answer
    waits for the write, and InfluxDB, asked right after the answer, holds every reading with
    the answered seq. (An API answering after the broker's PUBACK fails here: nothing is stored
    yet.)"""
    gateway = f"http-{uuid.uuid4().hex[:6]}"
    url = urlsplit(influx_db.url)
    assert url.hostname is not None
    assert url.port is not None
    with FaultProxy(url.hostname, url.port) as proxy:
        slow = InfluxTarget(f"http://127.0.0.1:{proxy.port}", influx_db.database)
        start_bridge(procs, broker, slow, extra_env=FAST)
        api = _api(procs, broker, influx_db, gateway, tmp_path, timeout_s=10)
        proxy.set(latency_s=1.0)
        base = datetime.now(UTC) - timedelta(minutes=1)
        for i in range(2):
            body = _readings(f"{gateway}-cp{i}", base, 5)
            started = time.monotonic()
            resp = _post(api, body, f"key-held-{i:04d}")
            assert resp.status_code == 200, resp.text
            assert time.monotonic() - started >= 1
            stored = {(ch, ts): seq for ch, ts, seq in _stored(influx_db, gateway)}
            for reading, answered in zip(body, resp.json()["readings"], strict=True):
                assert stored[(reading["charger_id"], _time(reading["ts"]))] == answered["seq"]
            assert (resp.json()["stored"], resp.json()["not_stored"]) == (5, [])
