"""Pipeline benchmark: raw InfluxDB ingest vs. gateway -> Mosquitto -> telemetry-bridge -> InfluxDB.

``.venv/bin/python -m bench.pipeline_throughput [--readings N] [--batch-size B] [--duration S]``

Starts its own Mosquitto (TLS, project configuration) and InfluxDB 1.x on free loopback ports in
a temporary directory with a dev PKI, then measures, in one run:

1. raw line-protocol ingest of that InfluxDB (5,000-line batches, one client, then two clients
   at once), points/s;
2. sustained pipeline throughput: one ``telemetry-bridge`` process, one publisher process
   (``bench.publisher``) sending N readings as fast as the pipeline takes them; readings/s from
   the first publish until InfluxDB holds all N, and the loss (count and distinct seq);
3. publish-to-stored latency at a fraction (default 20%) of the measured throughput, from the
   live feed the processor publishes after each write;
4. the bridge's peak RSS (VmHWM) and the CPU each process used during the throughput phase.

Stored acknowledgements (``--acks both|on|off``, default both): phases 2 and 3 run once with the
bridge's ``STORED_ACKS`` off and once with it on, each round, in the same run (the bridge is
restarted with the other setting between them, taking over the same MQTT session; the order
alternates from round to round). With acknowledgements on, the publisher behaves as the edge
agent with ``DELETE_AFTER=stored`` does on the network (``bench.publisher --stored``): it
subscribes to its ``{root}/{gateway}/stored`` topic, counts a reading as unconfirmed from its
publish until an acknowledgement covers it, publishes only while fewer than ``--max-unconfirmed``
readings (the edge's ``MAX_UNCONFIRMED``, its default) are unconfirmed, and waits for the last
acknowledgement before it exits; so the bridge's acknowledgement loop bounds the throughput, as
it would bound an edge draining a backlog. It does not model the edge's SQLite deletes (the
publisher stands for gateways on other machines), epochs, or replays after ``STORED_TIMEOUT_S``.
The figure for acknowledgements is the throughput with them on / without them, per round (the
two phases minutes apart at most), and its median; and in the latency phase, besides
publish-to-stored, publish-to-acknowledgement (publish until the acknowledgement covering the
whole message arrives at the publisher).

Prints a table and optionally writes the figures as JSON (``--json``). A script, not a test.
Every process it starts is stopped by PID on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson
import paho.mqtt.client as paho

from bench.harness import cli
from bench.harness.influx import Influx
from bench.harness.mqtt import Connection
from bench.harness.procstat import cpu_seconds, cpu_snapshot, proc_status_kb
from bench.harness.readings import line
from bench.harness.report import Row, percentile, print_table, verdict
from bench.harness.stack import (
    DATABASE,
    TOPIC_ROOT,
    ManagedProcess,
    Stack,
    running_stack,
    start_bridge,
    wait_exit,
)
from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for

RAW_DATABASE: Final = "bench_raw"
RAW_BATCH: Final = 5_000
GATEWAY: Final = "bench-gw"
MAX_ROUNDS: Final = 9


#: The bridge's stored acknowledgements in a phase: "off" (STORED_ACKS=false, the publisher
#: forgets a reading on PUBACK) or "on" (the publisher waits for them, as the edge does).
MODES: Final = ("off", "on")


def round_gateway(k: int, mode: str) -> str:
    """The gateway of round ``k`` with acknowledgements ``mode`` (its own chargers and seq
    range, so phases never overlap)."""
    return f"{GATEWAY}-{k}-{mode}"


def latency_gateway(mode: str) -> str:
    return f"{LATENCY_GATEWAY}-{mode}"


LATENCY_GATEWAY: Final = "bench-lat"
TARGET_ACKS_RATIO: Final = 0.90

TARGET_RATIO: Final = 0.50
TARGET_P99_MS: Final = 250.0
TARGET_RSS_MB: Final = 150.0


# --- the run ---------------------------------------------------------------------------------


def _per_reading(pipe: dict[str, Any], name: str) -> float | None:
    """A process's CPU in the pipeline phase, in microseconds per reading."""
    cpu = pipe["cpu_seconds"].get(name)
    return None if cpu is None else 1e6 * cpu / pipe["readings"]


def median_index(ratios: list[float | None]) -> int:
    """Index of the median of ``ratios``; an incomplete round (None) counts as the lowest."""

    def key(k: int) -> float:
        ratio = ratios[k]
        return -1.0 if ratio is None else ratio

    order = sorted(range(len(ratios)), key=key)
    return order[len(order) // 2]


def measure_raw_ingest(
    influx: Influx, points: int, chargers: int, clients: int = 1, server_pid: int | None = None
) -> dict[str, Any]:
    """Points/s of 5,000-line writes from ``clients`` keep-alive clients at once (each sends
    every ``clients``-th body, in its own thread); bodies are built beforehand. With
    ``server_pid``, also InfluxDB's CPU per point meanwhile."""
    influx.query(f'CREATE DATABASE "{RAW_DATABASE}"')
    t0_ns = (time.time_ns() // 1_000_000 - 3_600_000) * 1_000_000
    bodies: list[bytes] = []
    for start in range(0, points, RAW_BATCH):
        lines = []
        for i in range(start, min(points, start + RAW_BATCH)):
            ns = t0_ns + (i // chargers) * 1_000_000
            cid = f"{GATEWAY}-cp{i % chargers:03d}"
            lines.append(line(GATEWAY, cid, repr(float(i)), "7200.0", i + 1, ns))
        bodies.append("\n".join(lines).encode())
    # One small warm-up write creates the shard before the clock starts.
    influx.write(RAW_DATABASE, bodies[0][: bodies[0].index(b"\n")])
    writers = [influx] + [Influx(influx.url) for _ in range(clients - 1)]
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            for body in bodies[k::clients]:
                writers[k].write(RAW_DATABASE, body)
        except BaseException as exc:  # reported below, after every thread ended
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(clients)]
    cpu0 = cpu_seconds(server_pid)
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start_t
    cpu1 = cpu_seconds(server_pid)
    for w in writers[1:]:
        w.close()
    if errors:
        raise errors[0]
    stored = influx.scalar("SELECT count(seq) FROM readings", RAW_DATABASE)
    influx.query(f'DROP DATABASE "{RAW_DATABASE}"')
    return {
        "points": points,
        "batch_lines": RAW_BATCH,
        "clients": clients,
        "seconds": elapsed,
        "points_per_s": points / elapsed,
        "stored": stored,
        "influxd_us_per_point": (
            None if cpu0 is None or cpu1 is None else 1e6 * (cpu1 - cpu0) / points
        ),
    }


def start_publisher(stack: Stack, name: str, gateway: str, args: list[str]) -> ManagedProcess:
    """``bench.publisher`` in its own process, as ``gateway``; its summary goes to NAME.json."""
    ident = stack.identity(gateway)
    argv = [
        sys.executable,
        "-m",
        "bench.publisher",
        "--port",
        str(stack.tls_port),
        "--ca",
        str(ident.ca_file),
        "--cert",
        str(ident.cert_file),
        "--key",
        str(ident.key_file),
        "--gateway",
        gateway,
        "--topic-root",
        TOPIC_ROOT,
        "--out",
        str(stack.work / f"{name}.json"),
        *args,
    ]
    return stack.start(name, argv)


def finish_publisher(stack: Stack, proc: ManagedProcess, timeout: float) -> dict[str, Any]:
    wait_exit(proc, timeout)
    result: dict[str, Any] = json.loads((stack.work / f"{proc.name}.json").read_text())
    return result


def wait_count(
    influx: Influx,
    gateway: str,
    expected: int,
    timeout: float,
    interval: float,
    alive: ManagedProcess,
    stall: float,
) -> tuple[int, float, int]:
    """Poll until InfluxDB holds ``expected`` readings of ``gateway``, at most ``timeout``
    seconds, giving up early when the count has not moved for ``stall`` seconds.

    Returns (count, wall time of the first answer showing all of them, polls).
    """
    q = f"SELECT count(seq) FROM readings WHERE gateway_id = '{gateway}'"
    start = time.monotonic()
    deadline = start + timeout
    polls = 0
    count = -1
    moved = start
    while time.monotonic() < deadline:
        now_count = influx.scalar(q, DATABASE)
        polls += 1
        if now_count >= expected:
            return now_count, time.time(), polls
        if now_count != count:
            count, moved = now_count, time.monotonic()
        elif time.monotonic() - moved > stall:
            print(f"bench: stalled at {count:,} of {expected:,} for {stall:.0f}s", file=sys.stderr)
            break
        if not alive.is_running():
            raise RuntimeError(f"the bridge exited ({alive.returncode()}):\n{alive.log_tail()}")
        time.sleep(interval)
    return max(count, 0), time.time(), polls


STORED_KEY: Final = "telemetry_bridge_readings_stored_total"
ACKS_KEY: Final = "telemetry_bridge_stored_acks_published_total"


def wait_bridge_stored(
    stack: Stack, before: float, expected: int, timeout: float, alive: ManagedProcess, stall: float
) -> tuple[float, int]:
    """Poll the bridge's own ``readings_stored`` counter (it counts a point once InfluxDB
    answered 204 for its write) every 20 ms until it grew by ``expected``; a status request
    costs InfluxDB nothing, where a ``count(seq)`` poll scans the whole database and competes
    with the writes being measured. Returns (wall time it was first seen, polls)."""
    deadline = time.monotonic() + timeout
    polls = 0
    last, moved = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        stored = stack.bridge_metrics().get(STORED_KEY, before) - before
        polls += 1
        if stored >= expected:
            return time.time(), polls
        if stored != last:
            last, moved = stored, time.monotonic()
        elif time.monotonic() - moved > stall:
            break
        if not alive.is_running():
            raise RuntimeError(f"the bridge exited ({alive.returncode()}):\n{alive.log_tail()}")
        time.sleep(0.02)
    return time.time(), polls


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters and histogram sums that moved between two snapshots (gauges: the last value)."""
    out: dict[str, float] = {}
    for key, value in after.items():
        name = key.removeprefix("telemetry_bridge_")
        if key.endswith(("_total", "_sum", "_count")):
            moved = value - before.get(key, 0.0)
            if moved:
                out[name] = moved
        else:
            out[name] = value
    return out


def publisher_ack_args(a: argparse.Namespace, mode: str) -> list[str]:
    """The publisher's options for acknowledgements ``mode`` (see the module docstring)."""
    if mode == "off":
        return []
    return ["--stored", "--max-unconfirmed", str(a.max_unconfirmed)]


def ack_summary(stored: dict[str, Any] | None, t_first: float) -> dict[str, Any] | None:
    """What the publisher saw of the acknowledgements (None with them off)."""
    if stored is None:
        return None
    lat = sorted(stored.pop("ack_latencies_ms"))
    confirmed_s = stored["t_last_confirm"] - t_first
    return {
        **stored,
        "messages_timed": len(lat),
        "ack_p50_ms": percentile(lat, 50),
        "ack_p95_ms": percentile(lat, 95),
        "ack_p99_ms": percentile(lat, 99),
        "ack_max_ms": lat[-1] if lat else float("nan"),
        "readings_per_ack": stored["acked_readings"] / stored["acks"] if stored["acks"] else 0.0,
        "confirmed_seconds": confirmed_s,
        "confirmed_per_s": stored["confirmed"] / confirmed_s if confirmed_s > 0 else None,
    }


def measure_pipeline(
    stack: Stack,
    influx: Influx,
    bridge: ManagedProcess,
    a: argparse.Namespace,
    gateway: str,
    mode: str = "off",
    publisher_args: Sequence[str] = (),
) -> dict[str, Any]:
    """N readings from one publisher process through the bridge (acknowledgements ``mode``),
    ``publisher_args`` added to its command line; the figures of the phase."""
    servers = stack.named("mosquitto", "influxd", "bridge")
    cpu_before = cpu_snapshot(servers)
    metrics_before = stack.bridge_metrics()
    t_wall0 = time.time()
    pub = start_publisher(
        stack,
        f"publisher-{gateway}",
        gateway,
        [
            "--readings",
            str(a.readings),
            "--batch-size",
            str(a.batch_size),
            "--chargers",
            str(a.chargers),
            "--window",
            str(a.window),
            "--timeout",
            str(a.timeout),
            *publisher_ack_args(a, mode),
            *publisher_args,
        ],
    )
    t_stored, polls = wait_bridge_stored(
        stack, metrics_before.get(STORED_KEY, 0.0), a.readings, a.timeout, bridge, a.stall
    )
    cpu_after = cpu_snapshot(servers)
    metrics_after = stack.bridge_metrics()
    t_wall1 = time.time()
    published = finish_publisher(stack, pub, a.timeout)
    # With acknowledgements on, the publisher exits after the last one: the bridge's count of
    # them is read then (the clock and the CPU figures stopped when the last reading was stored).
    acks_published = stack.bridge_metrics().get(ACKS_KEY, 0.0) - metrics_before.get(ACKS_KEY, 0.0)
    # What InfluxDB holds is counted once, after the clock stopped (nothing is trusted blindly).
    count, _, more = wait_count(influx, gateway, a.readings, 5.0, 0.5, bridge, 5.0)
    polls += more
    if count < a.readings:
        # Let the count settle a little before declaring a loss.
        count, t_stored, more = wait_count(influx, gateway, a.readings, 10.0, 0.5, bridge, 10.0)
        polls += more
    distinct = influx.scalar(
        f"SELECT count(distinct(seq)) FROM readings WHERE gateway_id = '{gateway}'", DATABASE
    )
    elapsed = t_stored - published["t_first_publish"]
    span = t_wall1 - t_wall0
    cpu = {
        name: (None if b is None or cpu_after[name] is None else cpu_after[name] - b)  # type: ignore[operator]
        for name, b in cpu_before.items()
    }
    cpu["publisher"] = published["cpu_s"]
    return {
        "acks": mode,
        "stored_acks": ack_summary(published.get("stored"), published["t_first_publish"]),
        "acks_published": acks_published,
        "readings": a.readings,
        "batch_size": a.batch_size,
        "messages": published["messages"],
        "publish_refused": published["refused"],
        "seconds": elapsed,
        # Only a complete run has a throughput; a stalled one reports what it stored until then.
        "readings_per_s": a.readings / elapsed if count == a.readings else None,
        "stored_per_s_until_end": count / elapsed,
        "publish_seconds": published["t_last_puback"] - published["t_first_publish"],
        "stored": count,
        "distinct_seq": distinct,
        "complete": count == a.readings and distinct == a.readings,
        "missing": a.readings - distinct,
        "duplicates_or_overwrites": count - distinct,
        "count_polls": polls,
        "cpu_seconds": cpu,
        "cpu_percent_of_one_core": {
            k: (None if v is None else 100.0 * v / span) for k, v in cpu.items()
        },
        "phase_wall_seconds": span,
        "bridge_metrics": metrics_delta(metrics_before, metrics_after),
    }


class LiveTimes:
    """Times the live messages of one gateway, received by an anonymous MQTT 5 client on the
    loopback listener (``subscribe``)."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.latencies_ms: list[float] = []
        self.seqs: set[int] = set()
        self.retained = 0
        self._lock = threading.Lock()

    def subscribe(self, port: int) -> Connection:
        return Connection(
            f"bench-live-{uuid.uuid4().hex[:8]}",
            port,
            subscribe=(f"{TOPIC_ROOT}/live/#", 0),
            on_message=self._on_message,
        )

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        if msg.retain:
            self.retained += 1
            return
        body = orjson.loads(msg.payload)
        if body.get("gateway_id") != self.gateway:
            return
        ts = datetime.fromisoformat(body["ts"]).timestamp()
        with self._lock:
            self.latencies_ms.append((now - ts) * 1000.0)
            self.seqs.add(int(body["seq"]))


class StoredPoller:
    """Polls ``count(seq)`` of one gateway in a thread and records when the count grew.

    With one bridge, batches are written in the order the broker delivered them, so a count of
    c means the first c readings published are stored.
    """

    def __init__(self, url: str, gateway: str, interval: float, deadline: float) -> None:
        self.samples: list[tuple[float, int]] = []
        self.expected = 1 << 62
        self.polls = 0
        self._influx = Influx(url)
        self._q = f"SELECT count(seq) FROM readings WHERE gateway_id = '{gateway}'"
        self._interval = interval
        self._deadline = deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stored-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = 0
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                count = self._influx.scalar(self._q, DATABASE)
                now = time.time()
                self.polls += 1
                if count != last:
                    self.samples.append((now, count))
                    last = count
                if count >= self.expected:
                    return
                self._stop.wait(self._interval)
        finally:
            self._influx.close()

    def wait(self, expected: int, timeout: float) -> None:
        self.expected = expected
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5.0)

    def latencies_ms(self, sent: list[list[float]], seq_first: int) -> list[float]:
        """Per reading: first poll showing it stored minus its message's publish time."""
        out: list[float] = []
        i = 0
        for first, n, t_pub in sent:
            needed = int(first) + int(n) - seq_first
            while i < len(self.samples) and self.samples[i][1] < needed:
                i += 1
            if i == len(self.samples):
                break
            out.extend([(self.samples[i][0] - t_pub) * 1000.0] * int(n))
        return out


def measure_latency(
    stack: Stack,
    influx: Influx,
    bridge: ManagedProcess,
    a: argparse.Namespace,
    rate: float,
    mode: str = "off",
) -> dict[str, Any]:
    batch = a.latency_batch_size or a.batch_size
    gateway = latency_gateway(mode)
    # A fixed fleet (the throughput phase's chargers by default), as in the field: a new charger
    # per reading would measure InfluxDB creating series, not the pipeline.
    chargers = max(a.latency_chargers or a.chargers, batch)
    live = LiveTimes(gateway)
    sub = live.subscribe(stack.local_port)
    metrics_before = stack.bridge_metrics()
    poller = StoredPoller(
        stack.influx_url,
        gateway,
        a.stored_poll_interval,
        time.monotonic() + a.duration + a.timeout,
    )
    try:
        pub = start_publisher(
            stack,
            f"publisher-latency-{mode}",
            gateway,
            [
                "--rate",
                f"{rate:.3f}",
                "--duration",
                str(a.duration),
                "--batch-size",
                str(batch),
                "--chargers",
                str(chargers),
                "--window",
                str(a.window),
                "--timeout",
                str(a.duration + a.timeout),
                *publisher_ack_args(a, mode),
            ],
        )
        published = finish_publisher(stack, pub, a.duration + a.timeout)
        poller.wait(published["readings"], a.timeout)
        count, _, _ = wait_count(
            influx,
            gateway,
            published["readings"],
            a.timeout,
            a.poll_interval,
            bridge,
            a.stall,
        )
        # Live messages follow the write (conflated, published one by one): wait until they
        # stop coming for 2 s, or all arrived, at most --timeout.
        settle_deadline = time.monotonic() + a.timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < settle_deadline and len(live.seqs) < published["readings"]:
            if len(live.seqs) != seen:
                seen, quiet_since = len(live.seqs), time.monotonic()
            elif time.monotonic() - quiet_since > 2.0:
                break
            time.sleep(0.1)
    finally:
        sub.close()
    metrics_after = stack.bridge_metrics()
    lat = sorted(live.latencies_ms)
    stored_lat = sorted(poller.latencies_ms(published["sent"], published["seq_first"]))
    return {
        "acks": mode,
        "stored_acks": ack_summary(published.get("stored"), published["t_first_publish"]),
        "target_readings_per_s": rate,
        "batch_size": batch,
        "chargers": chargers,
        "seconds": a.duration,
        "published": published["readings"],
        "messages": published["messages"],
        "max_schedule_lag_s": published["max_schedule_lag_s"],
        "stored": count,
        "stored_poll_interval_s": a.stored_poll_interval,
        "stored_polls": poller.polls,
        "stored_latency_readings": len(stored_lat),
        "stored_p50_ms": percentile(stored_lat, 50),
        "stored_p95_ms": percentile(stored_lat, 95),
        "stored_p99_ms": percentile(stored_lat, 99),
        "stored_max_ms": stored_lat[-1] if stored_lat else float("nan"),
        "live_messages": len(lat),
        "live_coverage": len(lat) / published["readings"] if published["readings"] else 0.0,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "bridge_metrics": metrics_delta(metrics_before, metrics_after),
    }


# --- report ---------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x:,.1f} ms"


def _rate(x: float | None) -> str:
    return "incomplete" if x is None else f"{x:,.0f} readings/s"


def _f1(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def pipeline_rows(fig: dict[str, Any], mode: str, res: dict[str, Any]) -> list[Row]:
    """The throughput phase of one acknowledgement mode (its median round)."""
    pipe, ratio, ratio2 = res["pipeline"], res["ratio"], res["ratio_2_clients"]
    n = len(fig["rounds"])
    med = f", median of {n} rounds" if n > 1 else ""
    title = (
        f"pipeline end to end, stored acks {mode} ({pipe['readings']:,} readings, "
        f"B={pipe['batch_size']})"
    )
    rows: list[Row] = []
    if pipe["readings_per_s"] is not None:
        rows.append((title, _rate(pipe["readings_per_s"]), f"the round of the median ratio{med}"))
        rows.append(
            (
                f"  ratio pipeline / raw (acks {mode}){med}",
                _pct(ratio),
                f"target >= {TARGET_RATIO:.0%}: {verdict(ratio >= TARGET_RATIO)}",
            )
        )
        if ratio2 is not None:
            rows.append(
                (
                    f"  ratio pipeline / raw with 2 clients (acks {mode}){med}",
                    _pct(ratio2),
                    f"target >= {TARGET_RATIO:.0%}: {verdict(ratio2 >= TARGET_RATIO)}",
                )
            )
    else:
        rows.append(
            (
                title,
                "INCOMPLETE",
                f"{pipe['stored']:,} stored in {pipe['seconds']:.0f}s, then no progress",
            )
        )
    rows.append(
        (
            "  missing (N - distinct seq stored)",
            f"{pipe['missing']:,}",
            f"count {pipe['stored']:,}, distinct seq {pipe['distinct_seq']:,}: "
            + verdict(pipe["complete"])
            + ("" if pipe["complete"] else " (stalled or timed out: see bridge metrics)"),
        )
    )
    st = pipe.get("stored_acks")
    if st is not None:
        rows.append(
            (
                "  acknowledgements received by the publisher",
                f"{st['acks']:,}",
                f"{st['readings_per_ack']:,.0f} readings each; {st['confirmed']:,} confirmed; "
                f"publishing waited {st['window_wait_s']:.1f} s for the window of "
                f"{st['max_unconfirmed']:,} unconfirmed",
            )
        )
        rows.append(
            (
                "  publish-to-acknowledgement p50 / p99 (throughput phase)",
                f"{_ms(st['ack_p50_ms'])} / {_ms(st['ack_p99_ms'])}",
                f"last acknowledgement {st['confirmed_seconds']:.2f} s after the first publish",
            )
        )
    bm = pipe.get("bridge_metrics", {})
    batches = bm.get("batch_seconds_count", 0.0)
    writes = bm.get("write_seconds_count", 0.0)
    if batches:
        mean_batch = bm["batch_seconds_sum"] / batches * 1000
        mean_write = bm.get("write_seconds_sum", 0.0) / writes * 1000 if writes else 0.0
        rows.append(
            (
                "  bridge batches / mean batch time / mean write time",
                f"{batches:,.0f} / {mean_batch:,.0f} ms / {mean_write:,.0f} ms",
                f"{writes:,.0f} writes, {bm.get('write_retries_total', 0):,.0f} retried; "
                f"{pipe['acks_published']:,.0f} acknowledgements published in all",
            )
        )
    cpus = [
        f"{name} {pct:.0f}%"
        for name, pct in pipe["cpu_percent_of_one_core"].items()
        if pct is not None
    ]
    us = [
        f"{name} {x:.1f}"
        for name in pipe["cpu_seconds"]
        if (x := _per_reading(pipe, name)) is not None
    ]
    rows.append(("  CPU during the phase (% of one core)", "", ", ".join(cpus)))
    rows.append(("  CPU per reading (us)", "", ", ".join(us)))
    return rows


def latency_rows(fig: dict[str, Any], mode: str, lat: dict[str, Any]) -> list[Row]:
    load = (
        f"at {lat['target_readings_per_s']:,.0f} readings/s "
        f"({fig['latency_load']:.0%} of max, B={lat['batch_size']})"
    )
    p99 = lat["stored_p99_ms"]
    rows: list[Row] = [
        (
            f"publish-to-stored latency, acks {mode}, {load} p50",
            _ms(lat["stored_p50_ms"]),
            f"count(seq) polled every {lat['stored_poll_interval_s'] * 1000:.0f} ms; "
            f"{lat['stored_latency_readings']:,} of {lat['published']:,} readings",
        ),
        ("  p95", _ms(lat["stored_p95_ms"]), ""),
        ("  p99", _ms(p99), f"target <= {TARGET_P99_MS:.0f} ms: {verdict(p99 <= TARGET_P99_MS)}"),
    ]
    st = lat.get("stored_acks")
    if st is not None:
        rows += [
            (
                "  publish-to-acknowledgement p50",
                _ms(st["ack_p50_ms"]),
                f"{st['messages_timed']:,} messages; {st['acks']:,} acknowledgements of "
                f"{st['readings_per_ack']:,.0f} readings each",
            ),
            ("  p95", _ms(st["ack_p95_ms"]), ""),
            (
                "  p99",
                _ms(st["ack_p99_ms"]),
                "informational: includes the wait for the bridge's next flush (ACK_INTERVAL_S)",
            ),
        ]
    rows += [
        (
            f"  publish-to-live-message p50 / p95 / p99 (acks {mode})",
            f"{lat['p50_ms']:,.0f} / {lat['p95_ms']:,.0f} / {lat['p99_ms']:,.0f} ms",
            f"{lat['live_messages']:,} live messages for {lat['published']:,} readings "
            f"of {lat['chargers']:,} chargers (conflated and rate-budgeted; informational)",
        )
    ]
    return rows


def print_report(fig: dict[str, Any], out: Callable[[str], None] = print) -> None:
    rounds = fig["rounds"]
    modes: list[str] = list(fig["modes"])
    first = fig["modes"][modes[0]]
    rows: list[Row] = [
        (
            "raw InfluxDB ingest (5,000-line batches, 1 client)",
            f"{first['raw_ingest']['points_per_s']:,.0f} points/s",
            f"the round of acks {modes[0]}'s median ratio",
        ),
        (
            "raw InfluxDB ingest (5,000-line batches, 2 clients)",
            f"{first['raw_ingest_2_clients']['points_per_s']:,.0f} points/s",
            "InfluxDB on both cores: the server's limit",
        ),
    ]
    for mode in modes:
        rows += pipeline_rows(fig, mode, fig["modes"][mode])
    if fig.get("acks_ratio") is not None:
        ratio = fig["acks_ratio"]
        rows.append(
            (
                f"pipeline with acks on / acks off, median of {len(rounds)} rounds",
                _pct(ratio),
                f"target >= {TARGET_ACKS_RATIO:.0%}: {verdict(ratio >= TARGET_ACKS_RATIO)}; "
                "per round: " + ", ".join(_pct(r) for r in fig["acks_ratios"]),
            )
        )
    us = fig.get("bridge_us_per_reading", {})
    if us:
        rows.append(
            (
                f"bridge CPU per reading, acks {' / '.join(us)}, median of {len(rounds)} rounds",
                " / ".join(f"{x:.1f}" for x in us.values()) + " us",
                "per round: "
                + "; ".join(
                    ", ".join(f"{m} {_f1(r['modes'][m].get('bridge_us_per_reading'))}" for m in us)
                    for r in rounds
                ),
            )
        )
    for k, r in enumerate(rounds, start=1):
        per_mode = "; ".join(
            f"{m}: {_rate(r['modes'][m]['pipeline_readings_per_s'])} "
            f"({_pct(r['modes'][m]['ratio'])}, {_pct(r['modes'][m]['ratio_2_clients'])})"
            for m in r["order"]
        )
        rows.append(
            (
                f"  round {k}: raw 1 client, 2 clients",
                f"{r['raw_points_per_s']:,.0f}, {r['raw_2_clients_points_per_s']:,.0f}",
                f"points/s; then {per_mode}",
            )
        )
        costs = r["influxd_us_per_point"]
        if None not in costs:
            rows.append(
                (
                    "    influxd CPU per point (raw 1, raw 2, pipeline "
                    + ", ".join(r["order"])
                    + ")",
                    "",
                    ", ".join(f"{x:.1f}" for x in costs) + " us",
                )
            )
    for mode, lat in fig.get("latency_modes", {}).items():
        rows += latency_rows(fig, mode, lat)
    for mode, rss in fig["bridge_rss"].items():
        hwm = rss["peak_mb"]
        rows.append(
            (
                f"bridge peak RSS (VmHWM, after full load), acks {mode}",
                f"{hwm:.1f} MB" if hwm is not None else "n/a",
                f"target <= {TARGET_RSS_MB:.0f} MB: "
                + verdict(hwm is not None and hwm <= TARGET_RSS_MB)
                + (f"; {rss['idle_mb']:.1f} MB idle" if rss["idle_mb"] is not None else ""),
            )
        )
    if fig.get("machine_load") is not None:
        rows.append(("load average at start / end", "", fig["machine_load"]))
    print_table(rows, out)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "bench.pipeline_throughput",
        "Raw InfluxDB ingest vs. the telemetry pipeline (with the bridge's stored "
        "acknowledgements off and on), latency at partial load, bridge memory. Starts and stops "
        "its own servers on loopback.",
    )
    p.add_argument(
        "--readings", type=int, default=200_000, help="N readings for the throughput phase"
    )
    p.add_argument("--batch-size", type=int, default=500, help="B readings per MQTT message")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of the latency phase")
    p.add_argument(
        "--chargers", type=int, default=1000, help="distinct chargers (throughput phase)"
    )
    p.add_argument("--window", type=int, default=100, help="publisher's unacknowledged publishes")
    p.add_argument("--raw-points", type=int, default=200_000, help="points for the raw ingest")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help=f"raw + pipeline rounds, median ratio (1..{MAX_ROUNDS})",
    )
    p.add_argument(
        "--acks",
        choices=("both", *MODES),
        default="both",
        help="the bridge's stored acknowledgements: off, on, or both in each round (default)",
    )
    p.add_argument(
        "--max-unconfirmed",
        type=int,
        default=EdgeSettings.model_fields["max_unconfirmed"].default,
        help="acks on: readings the publisher leaves unacknowledged at most (the edge's "
        "MAX_UNCONFIRMED; 0: never wait)",
    )
    p.add_argument("--latency-load", type=float, default=0.2, help="fraction of measured max")
    p.add_argument("--latency-batch-size", type=int, default=0, help="default: --batch-size")
    p.add_argument(
        "--latency-chargers", type=int, default=0, help="chargers, latency phase (0: 3 s of load)"
    )
    p.add_argument("--no-latency", action="store_true", help="skip the latency phase")
    p.add_argument("--poll-interval", type=float, default=0.2, help="count(seq) poll, seconds")
    p.add_argument(
        "--stored-poll-interval", type=float, default=0.02, help="latency phase count poll, s"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each phase, seconds")
    p.add_argument("--stall", type=float, default=30.0, help="give up when no progress, seconds")
    cli.add_env_option(p, "--bridge-env", "bridge", BridgeSettings, batch_max_messages=20)
    p.add_argument(
        "--profile-bridge",
        type=Path,
        help="run each bridge under cProfile, stats in FILE.MODE-K (K: its start, from 1)",
    )
    cli.add_output_options(p)
    a = p.parse_args(argv)
    if a.readings < 1 or a.batch_size < 1 or a.chargers < 1 or a.raw_points < 1:
        p.error("--readings, --batch-size, --chargers and --raw-points must be positive")
    if not 1 <= a.rounds <= MAX_ROUNDS:
        p.error(f"--rounds must be within 1..{MAX_ROUNDS}")
    if not 1 <= a.window <= 10_000:
        p.error("--window must be within 1..10000 (MQTT packet ids are 16-bit)")
    if a.batch_size > 5_000:
        p.error("--batch-size is at most 5,000 readings (ReadingBatch limit)")
    if a.max_unconfirmed < 0:
        p.error("--max-unconfirmed must be >= 0")
    a.bridge_env = cli.parse_env(p, "--bridge-env", a.bridge_env, BridgeSettings)
    (acks_var,) = env_for(BridgeSettings, stored_acks=True)
    if acks_var in a.bridge_env:
        p.error(f"{acks_var} is set by --acks")
    return a


class Bridges:
    """One bridge at a time, with the stored acknowledgements of a mode; records each mode's
    peak RSS (VmHWM) and the RSS of the first bridge when idle."""

    def __init__(self, stack: Stack, a: argparse.Namespace) -> None:
        self.stack = stack
        self.a = a
        self.starts = 0
        self.idle_kb: int | None = None
        self.peak_kb: dict[str, int | None] = {}
        self.current: ManagedProcess | None = None

    @contextmanager
    def running(self, mode: str) -> Iterator[ManagedProcess]:
        self.starts += 1
        env = {**env_for(BridgeSettings, stored_acks=mode == "on"), **self.a.bridge_env}
        prof: Path | None = self.a.profile_bridge
        if prof is not None:
            prof = prof.with_name(f"{prof.name}.{mode}-{self.starts}")
        bridge = start_bridge(self.stack, env, prof)
        assert bridge.pid is not None
        self.current = bridge
        if self.idle_kb is None:
            self.idle_kb = proc_status_kb(bridge.pid, "VmRSS")
        try:
            yield bridge
        finally:
            hwm = proc_status_kb(bridge.pid, "VmHWM")
            held = self.peak_kb.get(mode)
            self.peak_kb[mode] = hwm if held is None or hwm is None else max(held, hwm)
            # Stopped here (SIGTERM), so a profile is written before anyone reads it.
            bridge.stop(timeout=20)
            self.current = None


def measure_round(
    stack: Stack, influx: Influx, bridges: Bridges, a: argparse.Namespace, k: int
) -> dict[str, Any]:
    """Raw ingest (1 client, 2 clients), then the pipeline with gateway ``k`` of each mode
    (the order alternates from round to round, so neither always runs on a warmer machine)."""
    cli.log(f"round {k}/{a.rounds}: raw InfluxDB ingest ...")
    server = stack.proc("influxd").pid
    raw = measure_raw_ingest(influx, a.raw_points, a.chargers, 1, server)
    raw2 = measure_raw_ingest(influx, a.raw_points, a.chargers, 2, server)
    order = list(a.modes if k % 2 else reversed(a.modes))
    modes: dict[str, Any] = {}
    for mode in order:
        cli.log(f"round {k}/{a.rounds}: pipeline, stored acks {mode}, {a.readings:,} readings ...")
        with bridges.running(mode) as bridge:
            pipe = measure_pipeline(stack, influx, bridge, a, round_gateway(k, mode), mode)
        rate = pipe["readings_per_s"]
        modes[mode] = {
            "pipeline": pipe,
            "ratio": None if rate is None else rate / raw["points_per_s"],
            "ratio_2_clients": None if rate is None else rate / raw2["points_per_s"],
        }
    on, off = (modes.get(m, {}).get("pipeline", {}).get("readings_per_s") for m in ("on", "off"))
    return {
        "raw_ingest": raw,
        "raw_ingest_2_clients": raw2,
        "order": order,
        "modes": modes,
        "acks_ratio": None if on is None or off is None else on / off,
    }


def round_figures(r: dict[str, Any]) -> dict[str, Any]:
    """What the table lists of one round."""
    return {
        "raw_points_per_s": r["raw_ingest"]["points_per_s"],
        "raw_2_clients_points_per_s": r["raw_ingest_2_clients"]["points_per_s"],
        "order": r["order"],
        "modes": {
            m: {
                "pipeline_readings_per_s": x["pipeline"]["readings_per_s"],
                "ratio": x["ratio"],
                "ratio_2_clients": x["ratio_2_clients"],
                "complete": x["pipeline"]["complete"],
                # Bridge CPU per reading: what acknowledging costs, less disturbed than a rate
                # when the shared machine gives the bridge less CPU in one phase.
                "bridge_us_per_reading": _per_reading(x["pipeline"], "bridge"),
            }
            for m, x in r["modes"].items()
        },
        "acks_ratio": r["acks_ratio"],
        # InfluxDB's own CPU per point: raw 1 client, 2 clients, pipeline (each mode in order).
        "influxd_us_per_point": [
            r["raw_ingest"]["influxd_us_per_point"],
            r["raw_ingest_2_clients"]["influxd_us_per_point"],
            *(_per_reading(r["modes"][m]["pipeline"], "influxd") for m in r["order"]),
        ],
    }


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def run(a: argparse.Namespace) -> dict[str, Any]:
    a.modes = MODES if a.acks == "both" else (a.acks,)
    gateways = (
        *(round_gateway(k, m) for k in range(1, MAX_ROUNDS + 1) for m in MODES),
        *map(latency_gateway, MODES),
    )
    load0 = os.getloadavg()
    with cli.workdir("bench-pipeline-", a.keep) as work, running_stack(work, gateways) as stack:
        influx = Influx(stack.influx_url)
        try:
            bridges = Bridges(stack, a)
            rounds = [measure_round(stack, influx, bridges, a, k) for k in range(1, a.rounds + 1)]
            fig: dict[str, Any] = {"modes": {}}
            for mode in a.modes:
                # Per mode, the round with the median ratio stands for the run.
                ratios = [r["modes"][mode]["ratio"] for r in rounds]
                ratios2 = [r["modes"][mode]["ratio_2_clients"] for r in rounds]
                median = rounds[median_index(ratios)]
                fig["modes"][mode] = {
                    "raw_ingest": median["raw_ingest"],
                    "raw_ingest_2_clients": median["raw_ingest_2_clients"],
                    "pipeline": median["modes"][mode]["pipeline"],
                    "ratio": median["modes"][mode]["ratio"],
                    "ratio_2_clients": ratios2[median_index(ratios2)],
                }
            acks_ratios = [r["acks_ratio"] for r in rounds]
            known = [x for x in acks_ratios if x is not None]
            fig["acks_ratios"] = acks_ratios if len(a.modes) == 2 else []
            fig["acks_ratio"] = statistics.median(known) if len(known) == len(rounds) else None
            fig["bridge_us_per_reading"] = {
                m: statistics.median(
                    x for r in rounds if (x := _per_reading(r["modes"][m]["pipeline"], "bridge"))
                )
                for m in a.modes
            }
            # The figures of earlier versions (one bridge, one mode): those of the default
            # bridge (acknowledgements on) when measured.
            primary = "on" if "on" in a.modes else "off"
            fig.update(fig["modes"][primary])
            fig.update(
                rounds=[round_figures(r) for r in rounds],
                latency_load=a.latency_load,
                bridge_env=a.bridge_env,
                max_unconfirmed=a.max_unconfirmed,
                targets={
                    "ratio": TARGET_RATIO,
                    "acks_ratio": TARGET_ACKS_RATIO,
                    "p99_ms": TARGET_P99_MS,
                    "bridge_rss_mb": TARGET_RSS_MB,
                },
            )
            complete = all(x["pipeline"]["complete"] for r in rounds for x in r["modes"].values())
            if not complete:
                cli.log(
                    "a throughput round did not complete; no latency phase "
                    "(its load would be a fraction of a stalled rate)"
                )
            elif not a.no_latency:
                # The same load for every mode: a fraction of the rate without acknowledgements.
                reference = "off" if "off" in a.modes else primary
                rate = a.latency_load * float(fig["modes"][reference]["pipeline"]["readings_per_s"])
                fig["latency_modes"] = {}
                for mode in a.modes:
                    cli.log(f"latency, stored acks {mode}, at {rate:,.0f} readings/s ...")
                    with bridges.running(mode) as bridge:
                        fig["latency_modes"][mode] = measure_latency(
                            stack, influx, bridge, a, rate, mode
                        )
                fig["latency"] = fig["latency_modes"][primary]
            fig["bridge_rss"] = {
                m: {"peak_mb": _mb(bridges.peak_kb.get(m)), "idle_mb": _mb(bridges.idle_kb)}
                for m in a.modes
            }
            load1 = os.getloadavg()
            fig["machine_load"] = (
                " / ".join(f"{x:.2f}" for x in load0)
                + "  ->  "
                + " / ".join(f"{x:.2f}" for x in load1)
            )
            return fig
        finally:
            influx.close()


def main(argv: list[str] | None = None) -> None:
    cli.run_and_report(parse_args(argv), run, print_report)


if __name__ == "__main__":
    main()
