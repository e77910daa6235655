"""Benchmark publisher, run in its own process by ``bench.pipeline_throughput``.

One gateway (MQTT 5 over TLS with the gateway's certificate) publishing ReadingBatch payloads at
QoS 1 with a bounded window of unacknowledged publishes:

- ``--rate 0``: ``--readings`` readings as fast as the broker acknowledges them. Reading ``i``
  belongs to charger ``i % chargers`` and is stamped ``t0 + (i // chargers)`` milliseconds, so
  every point has its own key (measurement + tags + time) and its own ``seq``.
- ``--rate R``: R readings/s for ``--duration`` seconds, each message stamped with the wall
  clock at the moment it is built and published (the latency phase).

With ``--transactions L`` every reading of the throughput mode belongs to a charging session
of L readings of its charger (``transaction_id``; the first one ``tx_event`` ``started`` with an
``id_tag_hash``, the last ``ended`` with a ``stop_reason``): a fleet whose chargers are all in
sessions (``bench.transactions_cost`` compares it with readings without them).

With ``--stored`` it also behaves as the edge agent does with ``TELEMETRY_EDGE_DELETE_AFTER=
stored`` (edge_agent/publisher.py), as far as the network sees it: before publishing it subscribes
(QoS 1) to its own ``{root}/{gateway}/stored``; a reading counts as *unconfirmed* from its publish
until a stored acknowledgement covers its seq, and a message is published only while fewer than
``--max-unconfirmed`` readings are unconfirmed (the edge's ``TELEMETRY_EDGE_MAX_UNCONFIRMED``, whose
default is 20,000; 0: never wait). At the end it waits until every reading is acknowledged. What it
does not model: the outbox (no SQLite rows are kept or deleted: it stands for a gateway on another
machine), epochs (it sends none, so acknowledgements carry ``"epoch": null``), and the replay after
``STORED_TIMEOUT_S`` (it records how many messages waited longer than ``--stored-timeout`` instead).
It records, per message, the delay from its publish until the acknowledgement that completed it
(messages are completed in order: the edge deletes a batch once every seq of it is covered).

Writes a JSON summary (first publish, last PUBACK, counts, refused publishes, CPU seconds, and
with ``--stored`` the acknowledgements) to ``--out``. Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

from bench.harness.mqtt import Connection, Identity
from bench.harness.readings import batch_payload, reading, transaction
from telemetry_common.schema import format_ts
from telemetry_common.topics import DEFAULT_ROOT, Topics


def charger_id(gateway: str, charger: int) -> str:
    return f"{gateway}-cp{charger:03d}"


class Confirmations:
    """The stored acknowledgements of one gateway whose seqs are ``first .. first + capacity -
    1``: which seqs are confirmed (a bytearray, one byte per seq), the unconfirmed count that
    bounds publishing, and per message the delay from publish to its acknowledgement."""

    def __init__(self, first: int, capacity: int, max_unconfirmed: int) -> None:
        self.first = first
        self.max_unconfirmed = max_unconfirmed
        self._bits = bytearray(capacity)
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, int, float]] = deque()  # (first seq, n, publish time)
        self.sent = 0
        self.confirmed = 0
        self.acks = 0
        self.acked_readings = 0  # every seq each acknowledgement names, repeats included
        self.out_of_range = 0
        self.latencies_ms: list[float] = []
        self.t_last_confirm = 0.0
        self.window_wait_s = 0.0

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        body = orjson.loads(msg.payload)
        with self._cond:
            self.acks += 1
            for a, b in body["seqs"]:
                self.acked_readings += b - a + 1
                lo, hi = max(a, self.first) - self.first, min(b + 1 - self.first, len(self._bits))
                if hi <= lo:
                    self.out_of_range += 1
                    continue
                new = (hi - lo) - self._bits.count(1, lo, hi)
                self._bits[lo:hi] = b"\x01" * (hi - lo)
                self.confirmed += new
            pending = self._pending
            while pending:
                first, n, t_pub = pending[0]
                lo = first - self.first
                if self._bits.find(0, lo, lo + n) != -1:
                    break
                pending.popleft()
                self.latencies_ms.append((now - t_pub) * 1000.0)
                self.t_last_confirm = now
            self._cond.notify_all()

    def reserve(self, deadline: float, conn: Connection) -> None:
        """Wait while ``max_unconfirmed`` readings or more are unconfirmed (the edge's rule)."""
        if self.max_unconfirmed <= 0:
            return
        t0 = time.monotonic()
        with self._cond:
            while self.sent - self.confirmed >= self.max_unconfirmed:
                if conn.lost.is_set():
                    raise RuntimeError("MQTT connection lost")
                if time.monotonic() > deadline:
                    raise RuntimeError("timed out waiting for stored acknowledgements")
                self._cond.wait(0.5)
        self.window_wait_s += time.monotonic() - t0

    def published(self, first: int, n: int, t_pub: float) -> None:
        with self._cond:
            self.sent += n
            self._pending.append((first, n, t_pub))

    def wait_all(self, deadline: float, conn: Connection) -> None:
        with self._cond:
            while self.confirmed < self.sent:
                if conn.lost.is_set() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.sent - self.confirmed} readings not acknowledged as stored"
                    )
                self._cond.wait(0.5)

    def summary(self, stored_timeout_s: float) -> dict[str, Any]:
        with self._cond:
            return {
                "max_unconfirmed": self.max_unconfirmed,
                "confirmed": self.confirmed,
                "acks": self.acks,
                "acked_readings": self.acked_readings,
                "out_of_range": self.out_of_range,
                "t_last_confirm": self.t_last_confirm,
                "window_wait_s": self.window_wait_s,
                "ack_latencies_ms": self.latencies_ms,
                "over_timeout": sum(1 for x in self.latencies_ms if x > 1000 * stored_timeout_s),
            }


def run(args: argparse.Namespace) -> dict[str, Any]:
    topics = Topics(args.topic_root)
    topic = topics.readings(args.gateway)
    if args.rate <= 0:
        capacity = args.readings
    else:
        capacity = max(1, round(args.duration * args.rate / args.batch_size)) * args.batch_size
    confirms = Confirmations(args.seq_start, capacity, args.max_unconfirmed)
    conn = Connection(
        args.gateway,
        args.port,
        identity=Identity(Path(args.ca), Path(args.cert), Path(args.key)),
        host=args.host,
        window=args.window,
        subscribe=(topics.stored(args.gateway), 1) if args.stored else None,
        on_message=confirms.on_message if args.stored else None,
    )
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
                    cid = charger_id(args.gateway, i % args.chargers)
                    tx = (
                        transaction(i // args.chargers, args.transactions)
                        if args.transactions
                        else None
                    )
                    readings.append(reading(cid, seq, ts, float(i), tx))
                    seq += 1
                payloads.append((n, batch_payload(args.gateway, readings)))
            build_cpu_s = time.process_time()
            t_first = time.time()
            for n, payload in payloads:
                if args.stored:
                    confirms.reserve(deadline, conn)
                conn.reserve(deadline)
                if args.stored:
                    confirms.published(args.seq_start + sent_readings, n, time.time())
                conn.send(topic, payload)
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
                    readings.append(reading(charger_id(args.gateway, charger), seq, ts, float(seq)))
                    seq += 1
                    charger = (charger + 1) % args.chargers
                payload = batch_payload(args.gateway, readings)
                if args.stored:
                    confirms.reserve(deadline, conn)
                conn.reserve(deadline)
                t_pub = time.time()
                if k == 0:
                    t_first = t_pub
                sent_log.append((seq - args.batch_size, args.batch_size, t_pub))
                if args.stored:
                    confirms.published(seq - args.batch_size, args.batch_size, t_pub)
                conn.send(topic, payload)
                sent_msgs += 1
                sent_readings += args.batch_size
        conn.wait_acked(sent_msgs, deadline)
        if args.stored:
            confirms.wait_all(deadline, conn)
    finally:
        conn.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "stored": confirms.summary(args.stored_timeout) if args.stored else None,
        "t_first_publish": t_first,
        "t_last_puback": conn.acks.last_ack,
        "messages": sent_msgs,
        "readings": sent_readings,
        "seq_first": args.seq_start,
        "seq_last": seq - 1,
        "refused": conn.acks.refused,
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
    p.add_argument("--topic-root", default=DEFAULT_ROOT)
    p.add_argument("--readings", type=int, default=0, help="readings to send (--rate 0)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--chargers", type=int, default=1000)
    p.add_argument("--window", type=int, default=200, help="unacknowledged publishes at most")
    p.add_argument("--rate", type=float, default=0.0, help="readings/s; 0 = as fast as possible")
    p.add_argument("--duration", type=float, default=5.0, help="seconds (with --rate)")
    p.add_argument("--seq-start", type=int, default=1)
    p.add_argument(
        "--transactions",
        type=int,
        default=0,
        metavar="L",
        help="--rate 0: every reading in a charging session of L readings of its charger "
        "(transaction_id; tx_event, id_tag_hash, stop_reason at its start and end); 0: none",
    )
    p.add_argument(
        "--stored", action="store_true", help="subscribe to the stored acknowledgements, wait"
    )
    p.add_argument(
        "--max-unconfirmed", type=int, default=50_000, help="with --stored (0: never wait)"
    )
    p.add_argument("--stored-timeout", type=float, default=30.0, help="edge's STORED_TIMEOUT_S")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on every wait, seconds")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not 1 <= args.window <= 10_000:
        p.error("--window must be within 1..10000 (MQTT packet ids are 16-bit)")
    result = run(args)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
