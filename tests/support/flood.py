"""One gateway floods a stack from ``telemetry-stack up`` while another keeps sending (issue 21's
scenario; used by tests/system/test_flood.py and bench/deadletter_flood.py).

- :func:`connect_as`: an MQTT 5 client over TLS with a gateway's certificate (issued here in the
  stack's PKI), as a gateway on another machine would connect.
- :func:`new_charger_batches`, :func:`invalid_batches`: the flood's payloads (1,000 fresh charger
  ids per message; 1,000 invalid readings per message).
- :func:`publish_all`: QoS 1 with a bounded window of unacknowledged publishes, every wait
  bounded.
- :class:`CalmGateway`: another gateway publishing one reading per charger every ``interval_s``
  (ts = now), and once asked, a reading of a charger it never sent before.
- :class:`LatestWatch`: polls the API's ``latest`` of the calm gateway's chargers and keeps the
  largest ``age_s`` seen, per phase of the flood (a failed or missing answer counts as
  infinitely old): ``new_chargers`` until the bridge committed those messages and the calm
  gateway is current again, then ``invalid``.
- :class:`DeadLetterFeed`: the dead-letter topic seen from the loopback listener: records and
  the readings they hold (``count`` of a record of a message's readings; 1 for a record of one
  reading or of a whole message).
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.tls import client_context

SCHEMA = "charger-telemetry/1"


def _ts(at: datetime | None = None) -> str:
    at = at or datetime.now(UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect_as(state: dict[str, Any], gateway: str, bin_dir: Path) -> mqtt.Client:
    """A connected MQTT 5 client with ``gateway``'s certificate (issued in the stack's PKI)."""
    pki_dir = Path(state["pki_dir"])
    if not (pki_dir / f"{gateway}.crt").is_file():
        subprocess.run(
            [str(bin_dir / "telemetry-stack"), "pki", "gateway", gateway, "--dir", str(pki_dir)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gateway, protocol=mqtt.MQTTv5)
    client.tls_set_context(
        client_context(
            Path(state["mqtt"]["ca_file"]), pki_dir / f"{gateway}.crt", pki_dir / f"{gateway}.key"
        )
    )
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    codes: list[ReasonCode] = []

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        codes.append(rc)
        connected.set()

    client.on_connect = on_connect
    client.connect(state["mqtt"]["host"], int(state["mqtt"]["tls_port"]), keepalive=30)
    client.loop_start()
    if not connected.wait(15) or codes[0].is_failure:
        client.loop_stop()
        raise RuntimeError(f"{gateway} could not connect: {codes}")
    return client


def new_charger_batches(gateway: str, messages: int, per: int, tag: str) -> Iterator[bytes]:
    """``messages`` payloads of ``per`` readings, each of a charger id never seen before."""
    seq = 0
    for m in range(messages):
        readings = []
        at = _ts()
        for k in range(per):
            seq += 1
            readings.append(
                {"charger_id": f"fl-{tag}-{m:03d}-{k:04d}", "seq": seq, "ts": at,
                 "values": {"power_w": 1.0}}
            )  # fmt: skip
        yield orjson.dumps({"schema": SCHEMA, "gateway_id": gateway, "readings": readings})


def invalid_batches(gateway: str, messages: int, per: int, first_seq: int) -> Iterator[bytes]:
    """``messages`` payloads of ``per`` readings each refused ``invalid_reading`` (a value that is
    not a number) by the bridge."""
    seq = first_seq
    for _ in range(messages):
        at = _ts()
        readings = []
        for k in range(per):
            seq += 1
            readings.append(
                {"charger_id": f"fl-bad-{k:04d}", "seq": seq, "ts": at,
                 "values": {"power_w": "high"}}
            )  # fmt: skip
        yield orjson.dumps({"schema": SCHEMA, "gateway_id": gateway, "readings": readings})


def publish_all(
    client: mqtt.Client, topic: str, payloads: Iterable[bytes], *, window: int, timeout: float
) -> int:
    """Publish each payload QoS 1, at most ``window`` without a PUBACK; return how many were
    published once every PUBACK came (RuntimeError past ``timeout`` or on a refusal)."""
    deadline = time.monotonic() + timeout
    pending: list[mqtt.MQTTMessageInfo] = []
    sent = 0
    for payload in payloads:
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        pending.append(info)
        sent += 1
        while len(pending) >= window:
            pending[0].wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not pending[0].is_published():
                raise RuntimeError(f"no PUBACK within {timeout}s")
            pending.pop(0)
    for info in pending:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise RuntimeError(f"no PUBACK within {timeout}s")
    return sent


class CalmGateway(threading.Thread):
    """Publishes one reading of each of ``chargers`` every ``interval_s`` (ts = now) until
    :meth:`stop`; :meth:`add_charger` makes the next message carry one more charger."""

    def __init__(
        self, client: mqtt.Client, topic: str, gateway: str, chargers: list[str], interval_s: float
    ) -> None:
        super().__init__(name=f"calm-{gateway}", daemon=True)
        self.client, self.topic, self.gateway = client, topic, gateway
        self.chargers = list(chargers)
        self.interval_s = interval_s
        self.seq = 0
        self.failures: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def add_charger(self, charger_id: str) -> None:
        with self._lock:
            self.chargers.append(charger_id)

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                chargers = list(self.chargers)
            at = _ts()
            readings = []
            for charger_id in chargers:
                self.seq += 1
                readings.append(
                    {"charger_id": charger_id, "seq": self.seq, "ts": at,
                     "values": {"power_w": float(self.seq)}}
                )  # fmt: skip
            payload = {"schema": SCHEMA, "gateway_id": self.gateway, "readings": readings}
            info = self.client.publish(self.topic, orjson.dumps(payload), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.failures.append(mqtt.error_string(info.rc))
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class LatestWatch(threading.Thread):
    """Polls ``GET /v1/chargers/{id}/latest`` for ``chargers`` every ``every_s``; ``max_age``
    is the largest ``age_s`` seen (a charger without an answer counts as ``inf``)."""

    def __init__(
        self,
        api_url: str,
        key: str,
        chargers: list[str],
        every_s: float = 0.25,
        influx: tuple[str, str] | None = None,
    ):
        """``influx``: (url, database) to also follow the first charger's newest stored
        reading (``max_stored_age``)."""
        super().__init__(name="latest-watch", daemon=True)
        self.api_url, self.key = api_url, key
        self.chargers = list(chargers)
        self.every_s = every_s
        self.influx = influx
        self.max_age = 0.0
        #: What the scenario is doing (set by it) -> the largest age seen meanwhile.
        self.phase = ""
        self.max_age_by_phase: dict[str, float] = {}
        #: The oldest of the chargers' ages in the last round.
        self.last_age = math.inf
        self.max_stored_age = 0.0
        self.worst: tuple[float, str, str, str] | None = None  # age, charger, when, source
        self.polls = 0
        self._halt = threading.Event()

    def age(self, http: httpx.Client, charger_id: str) -> tuple[float, str]:
        """The charger's ``latest`` age and where the API took it from."""
        try:
            r = http.get(f"{self.api_url}/v1/chargers/{charger_id}/latest")
        except httpx.HTTPError as exc:
            return math.inf, type(exc).__name__
        if r.status_code != 200:
            return math.inf, str(r.status_code)
        doc = r.json()
        return float(doc["age_s"]), str(doc.get("source"))

    def stored_age(self, http: httpx.Client, charger_id: str) -> float:
        """How old the charger's newest reading in InfluxDB is (storage lag, not the feed's)."""
        if self.influx is None:
            return math.nan
        url, db = self.influx
        q = f"SELECT last(seq) FROM readings WHERE charger_id = '{charger_id}'"
        try:
            r = http.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"})
            series = r.json()["results"][0].get("series") or []
        except (httpx.HTTPError, ValueError, KeyError):
            return math.inf
        return time.time() - series[0]["values"][0][0] / 1e9 if series else math.inf

    def run(self) -> None:
        with httpx.Client(headers={"X-API-Key": self.key}, timeout=5) as http:
            while not self._halt.is_set():
                oldest = 0.0
                for charger_id in self.chargers:
                    age, source = self.age(http, charger_id)
                    oldest = max(oldest, age)
                    if age > self.max_age:
                        self.max_age = age
                        self.worst = (age, charger_id, _ts(), source)
                    if age > self.max_age_by_phase.get(self.phase, 0.0):
                        self.max_age_by_phase[self.phase] = age
                self.last_age = oldest
                stored = self.stored_age(http, self.chargers[0])
                self.max_stored_age = max(self.max_stored_age, stored)
                self.polls += 1
                self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class DeadLetterFeed:
    """``{root}/deadletter/{gateway}`` from the loopback listener (anonymous, read-only)."""

    def __init__(self, state: dict[str, Any], gateway: str) -> None:
        self.records = 0
        self.readings = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dl-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.connect(state["mqtt"]["host"], int(state["mqtt"]["local_port"]), keepalive=30)
        self._client.loop_start()
        self._client.subscribe(f"{state['topic_root']}/deadletter/{gateway}", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK for the dead-letter feed")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        doc = orjson.loads(msg.payload)
        with self._lock:
            self.records += 1
            self.readings += int(doc.get("count") or 1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus metric's samples at ``url``/metrics (0 if absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    )


def influx_count(state: dict[str, Any], q: str) -> int:
    r = httpx.get(
        f"{state['influx']['url']}/query",
        params={"db": state["influx"]["database"], "q": q, "epoch": "ns"},
        timeout=30,
    )
    r.raise_for_status()
    series = r.json()["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


def _status(http: httpx.Client, url: str) -> int | None:
    try:
        return http.get(url).status_code
    except httpx.HTTPError:
        return None


def run_flood(
    state: dict[str, Any],
    bin_dir: Path,
    *,
    new_messages: int = 100,
    invalid_messages: int = 250,
    per: int = 1000,
    calm_chargers: int = 5,
    calm_interval_s: float = 0.5,
    timeout_s: float = 300.0,
    accept_wait_s: float = 15.0,
    echo: Any = None,
) -> dict[str, Any]:
    """The scenario on a running stack (``state``: its stack.json): a calm gateway sends, one
    gateway floods (``new_messages`` x ``per`` new charger ids, then ``invalid_messages`` x
    ``per`` invalid readings); midway through the invalid ones the calm gateway sends for a new
    charger (waited for up to ``accept_wait_s`` once the flood is handled: None if it was not
    accepted by then). Returns the figures; everything it starts is stopped before it returns.
    Every wait is bounded by ``timeout_s``."""
    say = echo or (lambda _s: None)
    tag = uuid.uuid4().hex[:6]
    root = state["topic_root"]
    api, read_key = state["api"]["url"], state["api"]["keys"]["read"]
    bridge = state["bridge"]["url"]
    calm_id, flood_id = f"gw-calm-{tag}", f"gw-flood-{tag}"
    chargers = [f"{calm_id}-cp{n}" for n in range(calm_chargers)]
    new_charger = f"{calm_id}-new"
    started = time.monotonic()
    deadline = started + timeout_s
    out: dict[str, Any] = {"per": per}
    calm_client = connect_as(state, calm_id, bin_dir)
    flood_client = connect_as(state, flood_id, bin_dir)
    calm = CalmGateway(
        calm_client, f"{root}/{calm_id}/readings", calm_id, chargers, calm_interval_s
    )
    watch = LatestWatch(
        api, read_key, chargers, influx=(state["influx"]["url"], state["influx"]["database"])
    )
    feed = DeadLetterFeed(state, flood_id)
    try:
        calm.start()
        with httpx.Client(headers={"X-API-Key": read_key}, timeout=5) as http:
            while any(_status(http, f"{api}/v1/chargers/{c}/latest") != 200 for c in chargers):
                if time.monotonic() > deadline:
                    raise RuntimeError("the calm gateway's chargers never had a latest")
                time.sleep(0.2)
        watch.phase = "new_chargers"
        watch.start()
        say(f"calm gateway {calm_id} stored; flooding as {flood_id}")
        topic = f"{root}/{flood_id}/readings"
        messages_before = metric(bridge, "telemetry_bridge_messages_total")
        t0 = time.monotonic()
        publish_all(
            flood_client, topic, new_charger_batches(flood_id, new_messages, per, tag),
            window=20, timeout=deadline - time.monotonic(),
        )  # fmt: skip
        out["new_chargers_publish_s"] = round(time.monotonic() - t0, 2)
        say(
            f"{new_messages} x {per} new charger ids published in {out['new_chargers_publish_s']} s"
        )
        # Phase 1 ends once the bridge committed its messages and the calm gateway's latest is
        # fresh again (its lag there is the cost of 100,000 new series: the limits' part).
        while time.monotonic() < deadline and (
            metric(bridge, "telemetry_bridge_messages_total") < messages_before + new_messages
            or watch.last_age > 2 * calm_interval_s + 1.0
        ):
            time.sleep(0.2)
        out["new_chargers_handled_s"] = round(time.monotonic() - t0, 2)
        say(
            f"... committed, the calm gateway current again after {out['new_chargers_handled_s']} s"
        )
        # Over the per-gateway limits, phase 1's readings are dead-lettered in bulk as well:
        # counted once the dead-letter feed is quiet (it trails the bridge's commits).
        seen = -1
        while seen != feed.readings and time.monotonic() < deadline:
            seen = feed.readings
            time.sleep(1.0)
        out["limit_exceeded"] = metric(bridge, "telemetry_bridge_limit_exceeded_total")
        out["new_chargers_deadletter_readings"] = feed_readings = feed.readings
        out["new_chargers_deadletter_publishes"] = feed_records = feed.records
        out["new_chargers_stored"] = influx_count(
            state,
            f"SELECT count(power_w) FROM readings WHERE gateway_id = '{flood_id}' AND time > 0",
        )
        watch.phase = "invalid"
        requests_before = metric(bridge, "telemetry_bridge_write_seconds_count")
        t1 = time.monotonic()
        half = invalid_messages // 2
        first_seq = new_messages * per
        publish_all(
            flood_client, topic, invalid_batches(flood_id, half, per, first_seq),
            window=20, timeout=deadline - time.monotonic(),
        )  # fmt: skip
        calm.add_charger(new_charger)
        added = time.monotonic()
        publish_all(
            flood_client, topic,
            invalid_batches(flood_id, invalid_messages - half, per, first_seq + half * per),
            window=20, timeout=deadline - time.monotonic(),
        )  # fmt: skip
        out["invalid_publish_s"] = round(time.monotonic() - t1, 2)
        say(
            f"{invalid_messages} x {per} invalid readings published in {out['invalid_publish_s']} s"
        )
        want = invalid_messages * per
        accepted_after: float | None = None
        handled_at: float | None = None
        with httpx.Client(headers={"X-API-Key": read_key}, timeout=5) as http:
            while time.monotonic() < deadline:
                now = time.monotonic()
                if handled_at is None and feed.readings - feed_readings >= want:
                    handled_at = now
                if (
                    accepted_after is None
                    and _status(http, f"{api}/v1/chargers/{new_charger}/latest") == 200
                ):
                    accepted_after = now - added
                    watch.chargers.append(new_charger)
                if handled_at is not None and (
                    accepted_after is not None or now - handled_at > accept_wait_s
                ):
                    break
                time.sleep(0.1)
        out["invalid_handled_s"] = None if handled_at is None else round(handled_at - t1, 2)
        out["new_charger_accepted_after_s"] = (
            None if accepted_after is None else round(accepted_after, 2)
        )
        out["deadletter_readings"] = feed.readings - feed_readings
        out["deadletter_publishes"] = records = feed.records - feed_records
        out["deadletter_publishes_per_message"] = round(records / invalid_messages, 2)
        out["write_requests_per_message"] = round(
            (metric(bridge, "telemetry_bridge_write_seconds_count") - requests_before)
            / invalid_messages, 2,
        )  # fmt: skip
        out["deadletter_points"] = influx_count(
            state,
            "SELECT count(payload_bytes) FROM deadletters "
            f"WHERE gateway_id = '{flood_id}' AND reason != 'limit_exceeded'",
        )
        out["deadletter_points_per_message"] = round(out["deadletter_points"] / invalid_messages, 2)
        time.sleep(2 * calm_interval_s)  # the calm gateway's latest after the flood, too
    finally:
        watch.stop()
        calm.stop()
        feed.close()
        for client in (calm_client, flood_client):
            client.disconnect()
            client.loop_stop()
    log = Path(state["services"]["bridge"]["log_file"])
    text = log.read_text(errors="replace") if log.is_file() else ""
    out["warning_lines"] = sum(
        1 for line in text.splitlines() if "dead-lettered from" in line and flood_id in line
    )
    out["calm_latest_max_age_s"] = watch.max_age
    out["calm_latest_max_age_by_phase_s"] = watch.max_age_by_phase
    out["calm_latest_worst"] = watch.worst
    out["calm_stored_max_age_s"] = round(watch.max_stored_age, 2)
    out["calm_latest_polls"] = watch.polls
    out["calm_publish_failures"] = calm.failures
    out["total_s"] = round(time.monotonic() - started, 2)
    out["calm_gateway"], out["flood_gateway"] = calm_id, flood_id
    return out
