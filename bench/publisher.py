"""Benchmark publisher, run in its own process by ``bench.pipeline_throughput``.

One gateway (paho-mqtt, MQTT 5 over TLS with the gateway's certificate) publishing ReadingBatch
payloads at QoS 1 with a bounded window of unacknowledged publishes:

- ``--rate 0``: ``--readings`` readings as fast as the broker acknowledges them. Reading ``i``
  belongs to charger ``i % chargers`` and is stamped ``t0 + (i // chargers)`` milliseconds, so
  every point has its own key (measurement + tags + time) and its own ``seq``.
- ``--rate R``: R readings/s for ``--duration`` seconds, each message stamped with the wall
  clock at the moment it is built and published (the latency phase).

Writes a JSON summary (first publish, last PUBACK, counts, refused publishes, CPU seconds) to
``--out``. Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.schema import SCHEMA_ID, format_ts
from telemetry_common.tls import client_context
from telemetry_common.topics import Topics

VALUES_TEMPLATE: dict[str, float] = {
    "energy_wh": 12345.6,
    "power_w": 7200.0,
    "current_a": 31.8,
    "voltage_v": 229.5,
    "soc_pct": 64.0,
    "temperature_c": 41.5,
    "frequency_hz": 50.0,
    "current_l1_a": 31.8,
}


class Window:
    """At most ``size`` unacknowledged publishes; counts PUBACKs and refusals."""

    def __init__(self, size: int) -> None:
        self._sem = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self.acked = 0
        self.refused = 0
        self.last_ack = 0.0
        self.connected = threading.Event()
        self.lost = threading.Event()

    def on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            print(f"publisher: connect refused: {reason_code}", file=sys.stderr)
            self.lost.set()
        else:
            self.connected.set()

    def on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.connected.is_set():
            print(f"publisher: disconnected: {reason_code}", file=sys.stderr)
        self.lost.set()

    def on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self.acked += 1
            if reason_code.is_failure:
                self.refused += 1
            self.last_ack = time.time()
        self._sem.release()

    def acquire(self, deadline: float) -> None:
        while not self._sem.acquire(timeout=0.5):
            if self.lost.is_set():
                raise SystemExit("publisher: connection lost")
            if time.monotonic() > deadline:
                raise SystemExit("publisher: timed out waiting for PUBACKs")


def _reading(gateway_id: str, charger: int, seq: int, ts: str, energy: float) -> dict[str, object]:
    values = dict(VALUES_TEMPLATE)
    values["energy_wh"] = energy
    return {
        "charger_id": f"{gateway_id}-cp{charger:03d}",
        "evse_id": 1,
        "connector_id": 1,
        "seq": seq,
        "ts": ts,
        "status": "Charging",
        "values": values,
    }


def _payload(gateway_id: str, readings: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway_id, "readings": readings})


def _connect(args: argparse.Namespace, window: Window) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.gateway,
        protocol=paho.MQTTv5,
    )
    client.tls_set_context(client_context(Path(args.ca), Path(args.cert), Path(args.key)))
    # paho's own window equals ours, so nothing waits in paho's internal queue.
    client.max_inflight_messages_set(args.window)
    client.on_connect = window.on_connect
    client.on_disconnect = window.on_disconnect
    client.on_publish = window.on_publish
    client.connect(args.host, args.port, keepalive=60, clean_start=True)
    client.loop_start()
    if not window.connected.wait(timeout=20) or window.lost.is_set():
        client.loop_stop()
        raise SystemExit("publisher: could not connect to the broker")
    return client


def run(args: argparse.Namespace) -> dict[str, Any]:
    topic = Topics(args.topic_root).readings(args.gateway)
    window = Window(args.window)
    client = _connect(args, window)
    deadline = time.monotonic() + args.timeout
    sent_msgs = 0
    sent_readings = 0
    seq = args.seq_start
    charger = 0
    max_lag = 0.0
    t_first = 0.0
    build_cpu_s = 0.0
    sent_log: list[tuple[int, int, float]] = []  # rate mode: (first seq, readings, publish time)
    try:
        if args.rate <= 0:
            t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
            # Payloads are built before the clock starts, as the raw ingest's bodies are: the
            # publisher stands for gateways on other machines, so its CPU should not compete
            # with the pipeline it measures more than publishing itself needs.
            payloads: list[tuple[int, bytes]] = []
            for start in range(0, args.readings, args.batch_size):
                n = min(args.batch_size, args.readings - start)
                readings = []
                for i in range(start, start + n):
                    ts = format_ts(t0 + timedelta(milliseconds=i // args.chargers))
                    readings.append(_reading(args.gateway, i % args.chargers, seq, ts, float(i)))
                    seq += 1
                payloads.append((n, _payload(args.gateway, readings)))
            build_cpu_s = time.process_time()
            t_first = time.time()
            for n, payload in payloads:
                window.acquire(deadline)
                info = client.publish(topic, payload, qos=1)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    raise SystemExit(f"publisher: publish failed with rc {info.rc}")
                sent_msgs += 1
                sent_readings += n
        else:
            interval = args.batch_size / args.rate
            total_msgs = max(1, round(args.duration / interval))
            t_start = time.monotonic()
            for k in range(total_msgs):
                due = t_start + k * interval
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                else:
                    max_lag = max(max_lag, now - due)
                ts = format_ts(datetime.now(UTC))
                readings = []
                for _ in range(args.batch_size):
                    readings.append(_reading(args.gateway, charger, seq, ts, float(seq)))
                    seq += 1
                    charger = (charger + 1) % args.chargers
                payload = _payload(args.gateway, readings)
                window.acquire(deadline)
                t_pub = time.time()
                if k == 0:
                    t_first = t_pub
                sent_log.append((seq - args.batch_size, args.batch_size, t_pub))
                info = client.publish(topic, payload, qos=1)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    raise SystemExit(f"publisher: publish failed with rc {info.rc}")
                sent_msgs += 1
                sent_readings += args.batch_size
        while window.acked < sent_msgs:
            if time.monotonic() > deadline or window.lost.is_set():
                raise SystemExit(
                    f"publisher: {sent_msgs - window.acked} publishes not acknowledged"
                )
            time.sleep(0.005)
    finally:
        client.disconnect()
        client.loop_stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "t_first_publish": t_first,
        "t_last_puback": window.last_ack,
        "messages": sent_msgs,
        "readings": sent_readings,
        "seq_first": args.seq_start,
        "seq_last": seq - 1,
        "refused": window.refused,
        "max_schedule_lag_s": max_lag,
        # CPU while publishing (building the payloads beforehand is not counted).
        "cpu_s": usage.ru_utime + usage.ru_stime - build_cpu_s,
        "build_cpu_s": build_cpu_s,
        "sent": sent_log,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--topic-root", default="chargers/v1")
    p.add_argument("--readings", type=int, default=0, help="readings to send (--rate 0)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--chargers", type=int, default=1000)
    p.add_argument("--window", type=int, default=200, help="unacknowledged publishes at most")
    p.add_argument("--rate", type=float, default=0.0, help="readings/s; 0 = as fast as possible")
    p.add_argument("--duration", type=float, default=5.0, help="seconds (with --rate)")
    p.add_argument("--seq-start", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not 1 <= args.window <= 10_000:
        p.error("--window must be within 1..10000 (MQTT packet ids are 16-bit)")
    result = run(args)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
