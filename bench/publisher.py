"""Benchmark publisher, run in its own process by ``bench.pipeline_throughput``.

One gateway (MQTT 5 over TLS with the gateway's certificate) publishing ReadingBatch payloads at
QoS 1 with a bounded window of unacknowledged publishes:

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
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness.mqtt import Connection, Identity
from bench.harness.readings import batch_payload, reading
from telemetry_common.schema import format_ts
from telemetry_common.topics import DEFAULT_ROOT, Topics


def charger_id(gateway: str, charger: int) -> str:
    return f"{gateway}-cp{charger:03d}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    topic = Topics(args.topic_root).readings(args.gateway)
    conn = Connection(
        args.gateway,
        args.port,
        identity=Identity(Path(args.ca), Path(args.cert), Path(args.key)),
        host=args.host,
        window=args.window,
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
                    readings.append(reading(cid, seq, ts, float(i)))
                    seq += 1
                payloads.append((n, batch_payload(args.gateway, readings)))
            build_cpu_s = time.process_time()
            t_first = time.time()
            for n, payload in payloads:
                conn.publish(topic, payload, deadline)
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
                conn.reserve(deadline)
                t_pub = time.time()
                if k == 0:
                    t_first = t_pub
                sent_log.append((seq - args.batch_size, args.batch_size, t_pub))
                conn.send(topic, payload)
                sent_msgs += 1
                sent_readings += args.batch_size
        conn.wait_acked(sent_msgs, deadline)
    finally:
        conn.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
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
    p.add_argument("--timeout", type=float, default=600.0, help="bound on every wait, seconds")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not 1 <= args.window <= 10_000:
        p.error("--window must be within 1..10000 (MQTT packet ids are 16-bit)")
    result = run(args)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
