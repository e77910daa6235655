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

Prints a table and optionally writes the figures as JSON (``--json``). A script, not a test.
Every process it starts is stopped by PID on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import pki as pki_mod
from telemetry_stack.servers import ManagedProcess, free_port, start_influxd, start_mosquitto

REPO: Final = Path(__file__).resolve().parent.parent
BIN: Final = Path(sys.executable).parent
TOPIC_ROOT: Final = "chargers/v1"
DATABASE: Final = "telemetry"
RAW_DATABASE: Final = "bench_raw"
RAW_BATCH: Final = 5_000
GATEWAY: Final = "bench-gw"
MAX_ROUNDS: Final = 9


def round_gateways(rounds: int) -> list[str]:
    """One gateway per round (its own chargers and seq range, so rounds never overlap)."""
    return [f"{GATEWAY}-{k}" for k in range(1, rounds + 1)]


LATENCY_GATEWAY: Final = "bench-lat"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

TARGET_RATIO: Final = 0.50
TARGET_P99_MS: Final = 250.0
TARGET_RSS_MB: Final = 150.0


# --- small helpers ---------------------------------------------------------------------------


def unique_ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(100):
        if len(ports) == n:
            break
        port = free_port()
        if port not in ports:
            ports.append(port)
    if len(ports) != n:
        raise RuntimeError("could not find free loopback ports")
    return ports


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` figure from /proc/PID/status (VmHWM, VmRSS), or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None if unreadable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    # After the command: state(0) ... utime is field 14 of stat, i.e. index 11 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Influx:
    """Just enough of the InfluxDB 1.x HTTP API for the benchmark."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def query(self, q: str, db: str | None = None) -> list[list[Any]]:
        params = {"q": q} if db is None else {"q": q, "db": db}
        r = self.http.post("/query", data=params)
        r.raise_for_status()
        body = r.json()
        result = body["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        series = result.get("series")
        if not series:
            return []
        rows: list[list[Any]] = series[0]["values"]
        return rows

    def scalar(self, q: str, db: str) -> int:
        rows = self.query(q, db)
        return int(rows[0][1]) if rows else 0

    def write(self, db: str, body: bytes) -> None:
        r = self.http.post("/write", params={"db": db, "precision": "ns"}, content=body)
        if r.status_code != 204:
            raise RuntimeError(f"write refused ({r.status_code}): {r.text[:300]}")


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Stack:
    work: Path
    pki: pki_mod.Pki
    tls_port: int = 0
    local_port: int = 0
    influx_url: str = ""
    bridge_http_port: int = 0
    procs: list[ManagedProcess] = field(default_factory=list)
    #: One keep-alive client for the bridge's status: a new httpx client per poll (every
    #: 20 ms) builds an SSL context each time and cost a quarter of a core, taken from the
    #: processes being measured.
    _status_http: httpx.Client | None = None

    def status_http(self) -> httpx.Client:
        if self._status_http is None:
            self._status_http = httpx.Client(timeout=5.0)
        return self._status_http

    def start(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        proc.start()
        return proc

    def stop_all(self) -> None:
        if self._status_http is not None:
            self._status_http.close()
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=10)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name} failed: {exc}", file=sys.stderr)


@contextmanager
def running_stack(work: Path) -> Iterator[Stack]:
    pki = pki_mod.init(work / "pki")
    for gateway in (GATEWAY, *round_gateways(MAX_ROUNDS), LATENCY_GATEWAY):
        pki_mod.issue_gateway(pki.dir, gateway)
    stack = Stack(work, pki)
    try:
        stack.tls_port, stack.local_port, http_port = unique_ports(3)
        mosq = start_mosquitto(
            work / "mosquitto", pki, stack.tls_port, stack.local_port, TOPIC_ROOT
        )
        stack.procs.append(mosq)
        influxd = start_influxd(work / "influxd", http_port)
        stack.procs.append(influxd)
        stack.influx_url = f"http://127.0.0.1:{http_port}"
        yield stack
    finally:
        stack.stop_all()


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
            c = i % chargers
            lines.append(
                f"readings,charger_id={GATEWAY}-cp{c:03d},connector_id=1,evse_id=1,"
                f"gateway_id={GATEWAY} energy_wh={float(i)!r},power_w=7200.0,current_a=31.8,"
                "voltage_v=229.5,soc_pct=64.0,temperature_c=41.5,frequency_hz=50.0,"
                f'current_l1_a=31.8,status="Charging",seq={i + 1}i '
                f"{t0_ns + (i // chargers) * 1_000_000}"
            )
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


def start_bridge(stack: Stack, extra_env: dict[str, str], profile: Path | None) -> ManagedProcess:
    cert, key = stack.pki.client_paths(pki_mod.BRIDGE_IDENTITY)
    stack.bridge_http_port = free_port()
    env = {
        **os.environ,
        "TELEMETRY_BRIDGE_HTTP_PORT": str(stack.bridge_http_port),
        "TELEMETRY_BRIDGE_MQTT__HOST": "127.0.0.1",
        "TELEMETRY_BRIDGE_MQTT__PORT": str(stack.tls_port),
        "TELEMETRY_BRIDGE_MQTT__CA_FILE": str(stack.pki.ca_file),
        "TELEMETRY_BRIDGE_MQTT__CERT_FILE": str(cert),
        "TELEMETRY_BRIDGE_MQTT__KEY_FILE": str(key),
        "TELEMETRY_BRIDGE_TOPIC_ROOT": TOPIC_ROOT,
        "TELEMETRY_BRIDGE_LOG_FORMAT": "json",
        "TELEMETRY_BRIDGE_INFLUX__URL": stack.influx_url,
        "TELEMETRY_BRIDGE_INFLUX__DATABASE": DATABASE,
        "TELEMETRY_BRIDGE_CLIENT_ID": f"bench-bridge-{uuid.uuid4().hex[:8]}",
        "TELEMETRY_BRIDGE_SHARE_GROUP": f"g{uuid.uuid4().hex[:8]}",
        **extra_env,
    }
    if profile is None:
        argv = [str(BIN / "telemetry-bridge")]
    else:
        # SIGTERM cancels the bridge's main task, so cProfile gets to write its file.
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bridge"]
    bridge = ManagedProcess("bridge", argv, log_file=stack.work / "bridge.log", env=env, cwd=REPO)
    stack.start(bridge)
    bridge.wait_ready(lambda: "subscribed to" in bridge.log_file.read_text(), timeout=30)
    return bridge


def start_publisher(stack: Stack, name: str, gateway: str, args: list[str]) -> ManagedProcess:
    cert, key = stack.pki.client_paths(gateway)
    argv = [
        sys.executable,
        "-m",
        "bench.publisher",
        "--port",
        str(stack.tls_port),
        "--ca",
        str(stack.pki.ca_file),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--gateway",
        gateway,
        "--topic-root",
        TOPIC_ROOT,
        "--out",
        str(stack.work / f"{name}.json"),
        *args,
    ]
    proc = ManagedProcess(name, argv, log_file=stack.work / f"{name}.log", cwd=REPO)
    return stack.start(proc)


def finish_publisher(stack: Stack, proc: ManagedProcess, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while proc.is_running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} still running after {timeout:.0f}s")
        time.sleep(0.05)
    if proc.returncode() != 0:
        raise RuntimeError(f"{proc.name} failed ({proc.returncode()}):\n{proc.log_tail()}")
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
        stored = bridge_metrics(stack).get(STORED_KEY, before) - before
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


def bridge_metrics(stack: Stack) -> dict[str, float]:
    """The bridge's own counters (its /status document), or {} when it does not answer."""
    try:
        r = stack.status_http().get(f"http://127.0.0.1:{stack.bridge_http_port}/status")
        metrics: dict[str, float] = r.json().get("metrics", {})
    except (httpx.HTTPError, ValueError):
        return {}
    return metrics


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


def cpu_snapshot(procs: dict[str, ManagedProcess]) -> dict[str, float | None]:
    return {name: cpu_seconds(p.pid) for name, p in procs.items()}


def measure_pipeline(
    stack: Stack, influx: Influx, bridge: ManagedProcess, a: argparse.Namespace, gateway: str
) -> dict[str, Any]:
    servers = {p.name: p for p in stack.procs if p.name in {"mosquitto", "influxd", "bridge"}}
    cpu_before = cpu_snapshot(servers)
    metrics_before = bridge_metrics(stack)
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
        ],
    )
    t_stored, polls = wait_bridge_stored(
        stack, metrics_before.get(STORED_KEY, 0.0), a.readings, a.timeout, bridge, a.stall
    )
    cpu_after = cpu_snapshot(servers)
    metrics_after = bridge_metrics(stack)
    t_wall1 = time.time()
    published = finish_publisher(stack, pub, a.timeout)
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


class LiveSubscriber:
    """Anonymous MQTT 5 client on the loopback listener, timing live messages of one gateway."""

    def __init__(self, port: int, gateway: str) -> None:
        self.gateway = gateway
        self.latencies_ms: list[float] = []
        self.seqs: set[int] = set()
        self.retained = 0
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-live-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60, clean_start=True)
        self.client.loop_start()
        if not self._subscribed.wait(timeout=20):
            self.close()
            raise RuntimeError("live subscriber did not get its SUBACK")

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"{TOPIC_ROOT}/live/#", qos=0)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

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

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
    stack: Stack, influx: Influx, bridge: ManagedProcess, a: argparse.Namespace, rate: float
) -> dict[str, Any]:
    batch = a.latency_batch_size or a.batch_size
    # A fixed fleet (the throughput phase's chargers by default), as in the field: a new charger
    # per reading would measure InfluxDB creating series, not the pipeline.
    chargers = max(a.latency_chargers or a.chargers, batch)
    sub = LiveSubscriber(stack.local_port, LATENCY_GATEWAY)
    metrics_before = bridge_metrics(stack)
    poller = StoredPoller(
        stack.influx_url,
        LATENCY_GATEWAY,
        a.stored_poll_interval,
        time.monotonic() + a.duration + a.timeout,
    )
    try:
        pub = start_publisher(
            stack,
            "publisher-latency",
            LATENCY_GATEWAY,
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
            ],
        )
        published = finish_publisher(stack, pub, a.duration + a.timeout)
        poller.wait(published["readings"], a.timeout)
        count, _, _ = wait_count(
            influx,
            LATENCY_GATEWAY,
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
        while time.monotonic() < settle_deadline and len(sub.seqs) < published["readings"]:
            if len(sub.seqs) != seen:
                seen, quiet_since = len(sub.seqs), time.monotonic()
            elif time.monotonic() - quiet_since > 2.0:
                break
            time.sleep(0.1)
    finally:
        sub.close()
    metrics_after = bridge_metrics(stack)
    lat = sorted(sub.latencies_ms)
    stored_lat = sorted(poller.latencies_ms(published["sent"], published["seq_first"]))
    return {
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


# --- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(rows: list[tuple[str, str, str]], out: Callable[[str], None] = print) -> None:
    """Rows of (figure, measured, note) as an aligned table."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out("")
    out(f"{'figure':<{w0}}  {'measured':>{w1}}  note")
    out(f"{'-' * w0}  {'-' * w1}  ----")
    for name, value, note in rows:
        out(f"{name:<{w0}}  {value:>{w1}}  {note}")
    out("")


def print_report(fig: dict[str, Any], out: Callable[[str], None] = print) -> None:
    raw = fig["raw_ingest"]
    pipe = fig["pipeline"]
    lat = fig.get("latency")
    rss = fig["bridge_rss"]
    ratio = fig["ratio"]
    raw2 = fig.get("raw_ingest_2_clients")
    ratio2 = fig.get("ratio_2_clients")
    rows: list[tuple[str, str, str]] = [
        (
            "raw InfluxDB ingest (5,000-line batches, 1 client)",
            f"{raw['points_per_s']:,.0f} points/s",
            "",
        )
    ]
    if raw2 is not None:
        rows.append(
            (
                "raw InfluxDB ingest (5,000-line batches, 2 clients)",
                f"{raw2['points_per_s']:,.0f} points/s",
                "InfluxDB on both cores: the server's limit",
            )
        )
    title = f"pipeline end to end ({pipe['readings']:,} readings, B={pipe['batch_size']})"
    if pipe["readings_per_s"] is not None:
        rows.append((title, f"{pipe['readings_per_s']:,.0f} readings/s", ""))
        rows.append(
            (
                "ratio pipeline / raw",
                f"{ratio:.1%}",
                f"target >= {TARGET_RATIO:.0%}: {verdict(ratio >= TARGET_RATIO)}",
            )
        )
        if ratio2 is not None:
            rows.append(
                (
                    "ratio pipeline / raw with 2 clients",
                    f"{ratio2:.1%}",
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
        rows.append(("ratio pipeline / raw", "n/a", f"target >= {TARGET_RATIO:.0%}: MISSED"))
    rounds = fig.get("rounds", [])
    if len(rounds) > 1:
        for k, row in enumerate(rows):
            if row[0].startswith("ratio pipeline / raw"):
                rows[k] = (f"{row[0]}, median of {len(rounds)} rounds", *row[1:])
        for k, r in enumerate(rounds, start=1):
            rate = r["pipeline_readings_per_s"]
            r2 = r.get("ratio_2_clients")
            rows.append(
                (
                    f"  round {k}: pipeline / raw (1 client, 2 clients)",
                    "n/a" if r["ratio"] is None else f"{r['ratio']:.1%}, {r2 or 0:.1%}",
                    ("incomplete" if rate is None else f"{rate:,.0f} readings/s")
                    + f" / {r['raw_points_per_s']:,.0f}, "
                    + f"{r.get('raw_2_clients_points_per_s') or 0:,.0f} points/s",
                )
            )
        costs = [r.get("influxd_us_per_point") for r in rounds]
        if all(c is not None and None not in c for c in costs):
            rows.append(
                (
                    "  influxd CPU per point (raw 1 client, 2 clients, pipeline)",
                    "",
                    "; ".join(
                        f"round {k}: " + ", ".join(f"{x:.1f}" for x in c) + " us"
                        for k, c in enumerate(costs, start=1)
                    ),
                )
            )
    rows.append(
        (
            "missing (N - distinct seq stored)",
            f"{pipe['missing']:,}",
            f"count {pipe['stored']:,}, distinct seq {pipe['distinct_seq']:,}: "
            + verdict(pipe["complete"])
            + ("" if pipe["complete"] else " (stalled or timed out: see bridge metrics)"),
        )
    )
    if lat is not None:
        load = (
            f"at {lat['target_readings_per_s']:,.0f} readings/s "
            f"({fig['latency_load']:.0%} of max, B={lat['batch_size']})"
        )
        for kind, prefix, note, targeted in (
            (
                "publish-to-stored latency",
                "stored_",
                f"count(seq) polled every {lat['stored_poll_interval_s'] * 1000:.0f} ms; "
                f"{lat['stored_latency_readings']:,} of {lat['published']:,} readings",
                True,
            ),
            (
                "publish-to-live-message latency",
                "",
                f"{lat['live_messages']:,} live messages for {lat['published']:,} readings "
                f"of {lat['chargers']:,} chargers (conflated and rate-budgeted by design)",
                False,
            ),
        ):
            p99 = lat[f"{prefix}p99_ms"]
            p99_note = (
                f"target <= {TARGET_P99_MS:.0f} ms: {verdict(p99 <= TARGET_P99_MS)}"
                if targeted
                else "informational"
            )
            rows += [
                (f"{kind} {load} p50", f"{lat[f'{prefix}p50_ms']:.1f} ms", note),
                ("  p95", f"{lat[f'{prefix}p95_ms']:.1f} ms", ""),
                ("  p99", f"{p99:.1f} ms", p99_note),
            ]
    hwm = rss["peak_mb"]
    rows.append(
        (
            "bridge peak RSS (VmHWM, after full load)",
            f"{hwm:.1f} MB" if hwm is not None else "n/a",
            f"target <= {TARGET_RSS_MB:.0f} MB: "
            + verdict(hwm is not None and hwm <= TARGET_RSS_MB)
            + (f"; {rss['idle_mb']:.1f} MB idle" if rss["idle_mb"] is not None else ""),
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
                "bridge batches / mean batch time / mean write time",
                f"{batches:,.0f} / {mean_batch:,.0f} ms / {mean_write:,.0f} ms",
                f"{writes:,.0f} writes, {bm.get('write_retries_total', 0):,.0f} retried",
            )
        )
    for name, pct in pipe["cpu_percent_of_one_core"].items():
        if pct is not None:
            rows.append(
                (f"CPU of {name} during the throughput phase", f"{pct:.0f}%", "of one core")
            )
    print_table(rows, out)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline_throughput",
        description="Raw InfluxDB ingest vs. the telemetry pipeline, latency at partial load, "
        "bridge memory. Starts and stops its own servers on loopback.",
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
    p.add_argument(
        "--bridge-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the bridge (e.g. TELEMETRY_BRIDGE_BATCH_MAX_MESSAGES=20)",
    )
    p.add_argument("--profile-bridge", type=Path, help="run the bridge under cProfile, stats here")
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    a = p.parse_args(argv)
    if a.readings < 1 or a.batch_size < 1 or a.chargers < 1 or a.raw_points < 1:
        p.error("--readings, --batch-size, --chargers and --raw-points must be positive")
    if not 1 <= a.rounds <= MAX_ROUNDS:
        p.error(f"--rounds must be within 1..{MAX_ROUNDS}")
    if not 1 <= a.window <= 10_000:
        p.error("--window must be within 1..10000 (MQTT packet ids are 16-bit)")
    if a.batch_size > 5_000:
        p.error("--batch-size is at most 5,000 readings (ReadingBatch limit)")
    for item in a.bridge_env:
        if "=" not in item or not item.startswith("TELEMETRY_BRIDGE_"):
            p.error(f"--bridge-env {item!r}: expected TELEMETRY_BRIDGE_NAME=VALUE")
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"bench: working directory {work}", file=sys.stderr)
    extra_env = dict(item.split("=", 1) for item in a.bridge_env)
    try:
        with running_stack(work) as stack:
            influx = Influx(stack.influx_url)
            try:
                bridge = start_bridge(stack, extra_env, a.profile_bridge)
                assert bridge.pid is not None
                idle_kb = proc_status_kb(bridge.pid, "VmRSS")
                rounds: list[dict[str, Any]] = []
                for k, gateway in enumerate(round_gateways(a.rounds), start=1):
                    print(f"bench: round {k}/{a.rounds}: raw InfluxDB ingest ...", file=sys.stderr)
                    server = next(p.pid for p in stack.procs if p.name == "influxd")
                    raw = measure_raw_ingest(influx, a.raw_points, a.chargers, 1, server)
                    raw2 = measure_raw_ingest(influx, a.raw_points, a.chargers, 2, server)
                    print(f"bench: round {k}/{a.rounds}: pipeline, {a.readings:,} readings ...",
                          file=sys.stderr)  # fmt: skip
                    pipe = measure_pipeline(stack, influx, bridge, a, gateway)
                    rate = pipe["readings_per_s"]
                    ratio = None if rate is None else rate / raw["points_per_s"]
                    ratio2 = None if rate is None else rate / raw2["points_per_s"]
                    rounds.append(
                        {
                            "raw_ingest": raw,
                            "raw_ingest_2_clients": raw2,
                            "pipeline": pipe,
                            "ratio": ratio,
                            "ratio_2_clients": ratio2,
                        }
                    )
                hwm_kb = proc_status_kb(bridge.pid, "VmHWM")
                # The round with the median ratio stands for the run; every round is reported.
                median = rounds[median_index([r["ratio"] for r in rounds])]
                raw, pipe = median["raw_ingest"], median["pipeline"]
                ratios2 = [r["ratio_2_clients"] for r in rounds]
                fig: dict[str, Any] = {
                    "raw_ingest": raw,
                    "raw_ingest_2_clients": median["raw_ingest_2_clients"],
                    "pipeline": pipe,
                    "ratio": median["ratio"],
                    "ratio_2_clients": ratios2[median_index(ratios2)],
                    "rounds": [
                        {
                            "raw_points_per_s": r["raw_ingest"]["points_per_s"],
                            "raw_2_clients_points_per_s": r["raw_ingest_2_clients"]["points_per_s"],
                            "pipeline_readings_per_s": r["pipeline"]["readings_per_s"],
                            "ratio": r["ratio"],
                            "ratio_2_clients": r["ratio_2_clients"],
                            "complete": r["pipeline"]["complete"],
                            # InfluxDB's own CPU per point: raw 1 client, 2 clients, pipeline.
                            "influxd_us_per_point": [
                                r["raw_ingest"]["influxd_us_per_point"],
                                r["raw_ingest_2_clients"]["influxd_us_per_point"],
                                _per_reading(r["pipeline"], "influxd"),
                            ],
                        }
                        for r in rounds
                    ],
                    "latency_load": a.latency_load,
                    "bridge_rss": {
                        "peak_mb": None if hwm_kb is None else hwm_kb / 1024,
                        "idle_mb": None if idle_kb is None else idle_kb / 1024,
                    },
                    "bridge_env": extra_env,
                    "targets": {
                        "ratio": TARGET_RATIO,
                        "p99_ms": TARGET_P99_MS,
                        "bridge_rss_mb": TARGET_RSS_MB,
                    },
                }
                if not all(r["pipeline"]["complete"] for r in rounds):
                    print(
                        "bench: a throughput round did not complete; no latency phase "
                        "(its load would be a fraction of a stalled rate)",
                        file=sys.stderr,
                    )
                elif not a.no_latency:
                    rate = a.latency_load * float(pipe["readings_per_s"])
                    print(f"bench: latency at {rate:,.0f} readings/s ...", file=sys.stderr)
                    fig["latency"] = measure_latency(stack, influx, bridge, a, rate)
                    hwm_after = proc_status_kb(bridge.pid, "VmHWM")
                    fig["bridge_rss"]["peak_mb_after_latency"] = (
                        None if hwm_after is None else hwm_after / 1024
                    )
                # Stopped here (not only in the finally) so a profile is written before we read it.
                bridge.stop(timeout=20)
                return fig
            finally:
                influx.close()
    finally:
        if a.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    try:
        fig = run(a)
    except KeyboardInterrupt:
        print("bench: interrupted; every process was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    print_report(fig)
    if a.json is not None:
        a.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
        print(f"bench: figures written to {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
