"""Query API benchmark: ``latest`` and downsampled ``history`` under 50 concurrent clients.

``.venv/bin/python -m bench.api_latency [--chargers N] [--history-chargers H] [--days D]``

Starts its own Mosquitto (TLS, project configuration, dev PKI) and InfluxDB 1.x on free loopback
ports in a temporary directory, the real ``telemetry-bridge`` and the real ``telemetry-api``
(with its MQTT settings, so the live mirror works; uvicorn picks uvloop and httptools when they
are installed), then:

1. loads data: D days of 1-minute history for H chargers written straight to InfluxDB as line
   protocol (5,000-line batches, the schema of ``processor/lineproto.py``; much faster than through
   MQTT), then one reading for each of N chargers published through the real pipeline as
   ReadingBatches (the bridge stores them and publishes the retained live topics), and waits
   until the API's mirror holds all N;
2. touches every charger's ``latest`` once (InfluxDB confirms each mirrored value), then measures
   ``GET /v1/chargers/{id}/latest`` for random ids among the N, and
   ``GET /v1/chargers/{id}/history?start=-24h&every=5m&agg=mean`` for random ids among the H,
   each with C concurrent keep-alive clients for a fixed time, using ``wrk`` when it is installed
   (``apt-get install wrk``) or a Python generator (aiohttp on uvloop) in its own process;
3. prints a table (core count, load average, targets with ok/MISSED, CPU of each process) and
   optionally writes every figure as JSON (``--json``).

A script, not a test. Every phase is bounded in time; every process it starts is stopped by PID
on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import queue
import random
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.pipeline_throughput import (
    BIN,
    DATABASE,
    GATEWAY,
    REPO,
    TOPIC_ROOT,
    Influx,
    Stack,
    cpu_seconds,
    percentile,
    print_table,
    running_stack,
    start_bridge,
    verdict,
)
from processor.lineproto import to_line
from query_api.settings import ApiSettings
from telemetry_common.schema import SCHEMA_ID, Reading, format_ts
from telemetry_common.tls import client_context
from telemetry_common.topics import Topics
from telemetry_stack import pki as pki_mod
from telemetry_stack.servers import ManagedProcess, free_port

READ_KEY: Final = "bench-read-" + "r" * 24
INGEST_KEY: Final = "bench-ingest-" + "i" * 24
CHARGER_PREFIX: Final = f"{GATEWAY}-cp"
LINES_PER_WRITE: Final = 5_000
MQTT_BATCH: Final = 500
HISTORY_QUERY: Final = "start=-24h&every=5m&agg=mean"
WRK_INSTALL: Final = "apt-get install wrk"

TARGET_LATEST_RPS: Final = 3_000.0
TARGET_LATEST_P99_MS: Final = 20.0
TARGET_HISTORY_P99_MS: Final = 100.0

#: Values of every reading (the fields of the schema; energy and power vary per point).
VALUES: Final = {
    "energy_wh": 0.0,
    "power_w": 7200.0,
    "current_a": 31.8,
    "voltage_v": 229.5,
    "soc_pct": 64.0,
    "temperature_c": 41.5,
    "frequency_hz": 50.0,
    "current_l1_a": 31.8,
}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def charger_ids(n: int) -> tuple[list[str], int]:
    """The ids of ``n`` chargers and the width of their zero-padded number."""
    width = max(5, len(str(n - 1)))
    return [f"{CHARGER_PREFIX}{i:0{width}d}" for i in range(n)], width


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    end = deadline_in(timeout)
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat (every process on the machine)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    return total - idle, total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of named processes, of reaped children (the load generator) and of the whole
    machine between ``start`` and ``stop``, as percent of one core."""

    def __init__(self, procs: dict[str, ManagedProcess]) -> None:
        self.procs = procs

    def start(self) -> None:
        self._t = time.monotonic()
        self._cpu = {n: cpu_seconds(p.pid) for n, p in self.procs.items()}
        self._children = children_cpu()
        self._machine = machine_busy()

    def stop(self, loadgen: str) -> dict[str, float | None]:
        span = time.monotonic() - self._t
        out: dict[str, float | None] = {}
        for name, proc in self.procs.items():
            before, after = self._cpu[name], cpu_seconds(proc.pid)
            out[name] = None if before is None or after is None else 100 * (after - before) / span
        out[loadgen] = 100 * (children_cpu() - self._children) / span
        busy, total = machine_busy()
        d_busy, d_total = busy - self._machine[0], total - self._machine[1]
        cores = os.cpu_count() or 1
        out["machine (all processes)"] = 100 * cores * d_busy / d_total if d_total else None
        return out


# --- the API ---------------------------------------------------------------------------------


def start_api(stack: Stack, extra_env: dict[str, str]) -> tuple[ManagedProcess, str]:
    """The real ``telemetry-api`` with the broker configured (live mirror); once /readyz is 200."""
    cert, key = stack.pki.client_paths(pki_mod.API_IDENTITY)
    port = free_port()
    env = {
        **os.environ,
        "TELEMETRY_API_HOST": "127.0.0.1",
        "TELEMETRY_API_PORT": str(port),
        "TELEMETRY_API_INFLUX__URL": stack.influx_url,
        "TELEMETRY_API_INFLUX__DATABASE": DATABASE,
        "TELEMETRY_API_KEYS": orjson.dumps({"read": READ_KEY, "ingest": INGEST_KEY}).decode(),
        "TELEMETRY_API_MQTT__HOST": "127.0.0.1",
        "TELEMETRY_API_MQTT__PORT": str(stack.tls_port),
        "TELEMETRY_API_MQTT__CA_FILE": str(stack.pki.ca_file),
        "TELEMETRY_API_MQTT__CERT_FILE": str(cert),
        "TELEMETRY_API_MQTT__KEY_FILE": str(key),
        "TELEMETRY_API_TOPIC_ROOT": TOPIC_ROOT,
        "TELEMETRY_API_LOG_FORMAT": "json",
        **extra_env,
    }
    api = ManagedProcess(
        "api", [str(BIN / "telemetry-api")], log_file=stack.work / "api.log", env=env, cwd=REPO
    )
    stack.start(api)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    api.wait_ready(ready, timeout=60)
    return api, url


def settle_s(api_env: dict[str, str]) -> float:
    """The API's LIVE_SETTLE_S (its default unless ``--api-env`` sets it)."""
    default = ApiSettings.model_fields["live_settle_s"].default
    return float(api_env.get("TELEMETRY_API_LIVE_SETTLE_S", default))


def trust_s(api_env: dict[str, str]) -> float:
    """The API's LATEST_TRUST_S: how long a value InfluxDB confirmed is served from memory."""
    default = ApiSettings.model_fields["latest_trust_s"].default
    return float(api_env.get("TELEMETRY_API_LATEST_TRUST_S", default))


def mirror_size(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("telemetry_api_mirror_chargers "):
            return int(float(line.split()[1]))
    return 0


def influx_queries(influx: Influx) -> int:
    """InfluxDB's count of /query requests since it started (``SHOW STATS``, httpd module)."""
    r = influx.http.get("/query", params={"q": "SHOW STATS FOR 'httpd'"})
    r.raise_for_status()
    total = 0
    for result in r.json()["results"]:
        for s in result.get("series", ()):
            cols = s["columns"]
            if "queryReq" in cols:
                total += sum(int(row[cols.index("queryReq")]) for row in s["values"])
    return total


# --- data ------------------------------------------------------------------------------------


def history_line_check(series: str) -> None:
    """Fail early if the fast builder below ever drifts from the processor's line protocol."""
    values = dict(VALUES, energy_wh=120.0, power_w=7000.0)
    reading = Reading.model_validate(
        {
            "charger_id": f"{CHARGER_PREFIX}0",
            "evse_id": 1,
            "connector_id": 1,
            "seq": 7,
            "ts": datetime(2026, 5, 1, tzinfo=UTC),
            "status": "Charging",
            "values": values,
        }
    )
    ns = 1_777_593_600_000_000_000
    ours = f"{series}energy_wh=120.0,power_w=7000.0,{_TAIL}7i {ns}"
    theirs = to_line(GATEWAY, reading, ns)
    if ours != theirs:
        raise RuntimeError(f"history line differs from processor.lineproto:\n{ours}\n{theirs}")


_TAIL: Final = (
    "current_a=31.8,voltage_v=229.5,soc_pct=64.0,temperature_c=41.5,frequency_hz=50.0,"
    'current_l1_a=31.8,status="Charging",seq='
)


def _series(charger_id: str) -> str:
    return f"readings,charger_id={charger_id},connector_id=1,evse_id=1,gateway_id={GATEWAY} "


def load_history(
    influx: Influx, ids: list[str], days: int, end: datetime, writers: int, timeout: float
) -> dict[str, Any]:
    """``days`` of 1-minute points for each of ``ids``, ending before ``end``, written to InfluxDB
    as line protocol in 5,000-line requests: one thread builds, ``writers`` threads send."""
    history_line_check(_series(f"{CHARGER_PREFIX}0"))
    minutes = days * 1440
    t_end = int(end.replace(second=0, microsecond=0).timestamp()) - 60
    t_first = t_end - (minutes - 1) * 60
    powers = [f"{7000.0 + 10 * (k % 37)!r}" for k in range(37)]
    bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=2 * writers)
    errors: list[BaseException] = []
    stop = threading.Event()
    hard_end = deadline_in(timeout)

    def put(item: bytes | None) -> None:
        while not stop.is_set():
            try:
                bodies.put(item, timeout=0.5)
            except queue.Full:
                if time.monotonic() > hard_end:
                    raise TimeoutError("history load") from None
            else:
                return

    def build() -> None:
        try:
            seq = 1
            lines: list[str] = []
            for cid in ids:
                series = _series(cid)
                for m in range(minutes):
                    lines.append(
                        f"{series}energy_wh={m * 120}.0,power_w={powers[m % 37]},{_TAIL}{seq}i "
                        f"{(t_first + m * 60) * 1_000_000_000}"
                    )
                    seq += 1
                    if len(lines) == LINES_PER_WRITE:
                        put("\n".join(lines).encode())
                        lines = []
                if stop.is_set():
                    return
            if lines:
                put("\n".join(lines).encode())
        except BaseException as exc:
            errors.append(exc)
        finally:
            for _ in range(writers):
                put(None)

    def write() -> None:
        client = Influx(influx.url)
        try:
            while not stop.is_set():
                try:
                    body = bodies.get(timeout=0.5)
                except queue.Empty:
                    if time.monotonic() > hard_end:
                        raise TimeoutError("history load") from None
                    continue
                if body is None:
                    return
                client.write(DATABASE, body)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            client.close()

    threads = [threading.Thread(target=build, name="lp-build", daemon=True)]
    threads += [
        threading.Thread(target=write, name=f"lp-write-{i}", daemon=True) for i in range(writers)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(max(0.0, hard_end - time.monotonic()) + 5)
    finally:
        stop.set()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"history load failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"history load did not finish within {timeout:.0f}s")
    points = len(ids) * minutes
    return {
        "chargers": len(ids),
        "days": days,
        "points": points,
        "lines_per_write": LINES_PER_WRITE,
        "writers": writers,
        "seconds": elapsed,
        "points_per_s": points / elapsed,
        "first": format_ts(datetime.fromtimestamp(t_first, UTC)),
        "last": format_ts(datetime.fromtimestamp(t_end, UTC)),
        "seq_next": len(ids) * minutes + 1,
    }


class Publisher:
    """One gateway's MQTT 5 session over TLS (QoS 1); ``publish_all`` waits for every PUBACK."""

    def __init__(self, stack: Stack) -> None:
        cert, key = stack.pki.client_paths(GATEWAY)
        self.acked = 0
        self.refused = 0
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=GATEWAY, protocol=paho.MQTTv5
        )
        self.client.tls_set_context(client_context(stack.pki.ca_file, cert, key))
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", stack.tls_port, keepalive=60, clean_start=True)
        self.client.loop_start()
        if not self._connected.wait(20):
            self.close()
            raise RuntimeError("the gateway could not connect to the broker")

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self.acked += 1
            self.refused += int(reason_code.is_failure)

    def publish_all(self, topic: str, payloads: list[bytes], timeout: float) -> None:
        for payload in payloads:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
        wait_for("PUBACKs of the load", lambda: self.acked >= len(payloads), timeout, 0.02)
        if self.refused:
            raise RuntimeError(f"the broker refused {self.refused} publishes")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def load_latest(stack: Stack, influx: Influx, ids: list[str], seq0: int, timeout: float) -> float:
    """One reading per charger, now, through the pipeline; returns seconds until all stored."""
    ts = format_ts(datetime.now(UTC))
    payloads: list[bytes] = []
    for start in range(0, len(ids), MQTT_BATCH):
        readings = [
            {
                "charger_id": cid,
                "evse_id": 1,
                "connector_id": 1,
                "seq": seq0 + start + k,
                "ts": ts,
                "status": "Charging",
                "values": dict(VALUES, energy_wh=float(start + k)),
            }
            for k, cid in enumerate(ids[start : start + MQTT_BATCH])
        ]
        payloads.append(
            orjson.dumps({"schema": SCHEMA_ID, "gateway_id": GATEWAY, "readings": readings})
        )
    q = f"SELECT count(seq) FROM readings WHERE gateway_id = '{GATEWAY}' AND time >= '{ts}'"
    t0 = time.perf_counter()
    pub = Publisher(stack)
    try:
        pub.publish_all(Topics(TOPIC_ROOT).readings(GATEWAY), payloads, timeout)
    finally:
        pub.close()
    wait_for(
        f"InfluxDB to hold the {len(ids):,} readings",
        lambda: influx.scalar(q, DATABASE) >= len(ids),
        timeout,
    )
    return time.perf_counter() - t0


def wait_quiet(proc: ManagedProcess, below_pct: float, timeout: float) -> float:
    """Wait (at most ``timeout``) until ``proc`` uses less than ``below_pct`` of a core over 2 s
    (InfluxDB compacting after the load would disturb the measurement); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = cpu_seconds(proc.pid)
        time.sleep(2.0)
        after = cpu_seconds(proc.pid)
        if before is None or after is None or 100 * (after - before) / 2.0 < below_pct:
            break
    return time.monotonic() - t0


async def _touch_all(url: str, ids: list[str], concurrency: int) -> Counter[str]:
    """GET latest of every id once; counts by answer source (or HTTP status)."""
    seen: Counter[str] = Counter()
    todo = iter(ids)
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"X-API-Key": READ_KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for cid in todo:
                r = await client.get(f"/v1/chargers/{cid}/latest", timeout=30)
                seen[r.json()["source"] if r.status_code == 200 else str(r.status_code)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


async def _first_requests(url: str, paths: list[str], concurrency: int) -> list[float]:
    """GET each path once with ``concurrency`` clients at once; each request's latency in ms
    (a 200 is required: the cold start of a cache is measured, not its errors)."""
    latencies: list[float] = []
    todo = iter(paths)
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"X-API-Key": READ_KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for path in todo:
                t = time.perf_counter()
                r = await client.get(path, timeout=60)
                latencies.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def check_answers(url: str, latest_id: str, history_id: str, history_points: int) -> None:
    """One request of each kind before measuring: a benchmark of error answers is worthless."""
    headers = {"X-API-Key": READ_KEY}
    r = httpx.get(f"{url}/v1/chargers/{latest_id}/latest", headers=headers, timeout=10)
    if r.status_code != 200 or r.json().get("charger_id") != latest_id:
        raise RuntimeError(f"latest answered {r.status_code}: {r.text[:300]}")
    if r.json().get("source") != "mirror":
        raise RuntimeError(f"latest of {latest_id} was not served from the mirror: {r.text[:300]}")
    r = httpx.get(
        f"{url}/v1/chargers/{history_id}/history?{HISTORY_QUERY}", headers=headers, timeout=30
    )
    if r.status_code != 200:
        raise RuntimeError(f"history answered {r.status_code}: {r.text[:300]}")
    points = len(r.json()["points"])
    if history_points and not 280 <= points <= 290:
        raise RuntimeError(f"history returned {points} buckets, expected about 288")


# --- load generators -------------------------------------------------------------------------

_WRK_SCRIPT: Final = """\
-- written by bench/api_latency.py: random charger ids, percentiles as JSON in done()
local n, width, prefix, suffix, out = %(n)d, %(width)d, "%(prefix)s", "%(suffix)s", "%(out)s"
wrk.headers["X-API-Key"] = "%(key)s"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
end
function request()
  local path = string.format("/v1/chargers/%%s%%0" .. width .. "d/%%s", prefix,
                             math.random(0, n - 1), suffix)
  return wrk.format("GET", path)
end
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(out, "w")
  f:write(string.format(
    '{"requests":%%d,"duration_us":%%d,"bytes":%%d,"errors":{"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d},"latency_us":{"p50":%%d,"p90":%%d,"p99":%%d,' ..
    '"p999":%%d,"max":%%d,"mean":%%f}}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
  f:close()
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    stack: Stack,
    name: str,
    url: str,
    target: tuple[int, int, str],
    clients: int,
    a: argparse.Namespace,
) -> dict[str, Any]:
    """``wrk`` with ``clients`` connections on random ids of ``target`` (count, width, suffix)."""
    n, width, suffix = target
    out = stack.work / f"{name}.json"
    script = stack.work / f"{name}.lua"
    script.write_text(
        _WRK_SCRIPT
        % {
            "n": n,
            "width": width,
            "prefix": CHARGER_PREFIX,
            "suffix": suffix,
            "out": str(out),
            "key": READ_KEY,
        },
        encoding="utf-8",
    )
    binary = wrk_binary()
    assert binary is not None
    argv = [
        binary,
        f"-t{min(a.wrk_threads, clients)}",
        f"-c{clients}",
        f"-d{max(1, round(a.duration))}s",
        f"--timeout={a.request_timeout:g}s",
        "-s",
        str(script),
        url,
    ]
    finish(stack, ManagedProcess(name, argv, log_file=stack.work / f"{name}.log"), a)
    raw = json.loads(out.read_text())
    lat = raw["latency_us"]
    errors = sum(raw["errors"].values())
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "req_per_s": raw["requests"] / seconds,
        "errors": errors,
        "error_detail": raw["errors"],
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000,
    }


def run_python_loadgen(
    stack: Stack,
    name: str,
    url: str,
    target: tuple[int, int, str],
    clients: int,
    a: argparse.Namespace,
) -> dict[str, Any]:
    """The Python generator (aiohttp, uvloop) in its own process, same contract as run_wrk."""
    n, width, suffix = target
    out = stack.work / f"{name}.json"
    config = {
        "url": url,
        "n": n,
        "width": width,
        "prefix": CHARGER_PREFIX,
        "suffix": suffix,
        "key": READ_KEY,
        "clients": clients,
        "duration": a.duration,
        "timeout": a.request_timeout,
        "out": str(out),
    }
    cfg = stack.work / f"{name}.config.json"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    argv = [sys.executable, "-m", "bench.api_latency", "--loadgen", str(cfg)]
    finish(stack, ManagedProcess(name, argv, log_file=stack.work / f"{name}.log", cwd=REPO), a)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def finish(stack: Stack, proc: ManagedProcess, a: argparse.Namespace) -> None:
    """Run the load generator to its end, at most its duration plus a grace period."""
    stack.start(proc)
    limit = a.duration + a.request_timeout + 30
    end = deadline_in(limit)
    while proc.is_running():
        if time.monotonic() > end:
            proc.stop(timeout=5)
            raise RuntimeError(f"{proc.name} still running after {limit:.0f}s: stopped")
        time.sleep(0.05)
    if proc.returncode() != 0:
        raise RuntimeError(f"{proc.name} failed ({proc.returncode()}):\n{proc.log_tail()}")


# The Python generator, run as ``python -m bench.api_latency --loadgen CONFIG`` in its own process.


async def _loadgen(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    n, width, prefix, suffix = cfg["n"], cfg["width"], cfg["prefix"], cfg["suffix"]
    paths = [f"/v1/chargers/{prefix}{i:0{width}d}/{suffix}" for i in range(n)]
    connector = aiohttp.TCPConnector(limit=cfg["clients"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=cfg["timeout"])
    headers = {"X-API-Key": cfg["key"]}
    rng = random.Random()  # noqa: S311 (picks charger ids, not secrets)
    async with aiohttp.ClientSession(
        base_url=cfg["url"], connector=connector, timeout=timeout, headers=headers
    ) as session:

        async def client(end: float) -> None:
            while time.perf_counter() < end:
                path = paths[rng.randrange(n)]
                t0 = time.perf_counter()
                try:
                    async with session.get(path) as r:
                        await r.read()
                        code = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    code = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[code] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(client(t_start + cfg["duration"]) for _ in range(cfg["clients"])))
        seconds = time.perf_counter() - t_start
    ms = sorted(x * 1000 for x in latencies)
    ok = statuses.get("200", 0)
    return {
        "requests": len(ms),
        "seconds": seconds,
        "req_per_s": len(ms) / seconds,
        "errors": len(ms) - ok,
        "error_detail": {k: v for k, v in statuses.items() if k != "200"},
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def loadgen_main(config: Path) -> None:
    cfg = json.loads(config.read_text())
    try:
        import uvloop

        result = uvloop.run(_loadgen(cfg))
        result["event_loop"] = "uvloop"
    except ImportError:
        result = asyncio.run(_loadgen(cfg))
        result["event_loop"] = "asyncio"
    Path(cfg["out"]).write_text(json.dumps(result), encoding="utf-8")


# --- phases ----------------------------------------------------------------------------------


def measure(
    stack: Stack,
    influx: Influx,
    name: str,
    url: str,
    target: tuple[int, int, str],
    clients: int,
    generator: str,
    a: argparse.Namespace,
) -> dict[str, Any]:
    """One measured phase: the load generator's figures, InfluxDB queries, CPU, load average."""
    watched = {
        p.name: p for p in stack.procs if p.name in {"api", "influxd", "mosquitto", "bridge"}
    }
    meter = CpuMeter(watched)
    load_before = os.getloadavg()
    queries_before = influx_queries(influx)
    meter.start()
    if generator == "wrk":
        fig = run_wrk(stack, name, url, target, clients, a)
    else:
        fig = run_python_loadgen(stack, name, url, target, clients, a)
    cpu = meter.stop(f"load generator ({generator})")
    fig["influx_queries"] = influx_queries(influx) - queries_before - 1
    fig["cpu_percent_of_one_core"] = cpu
    fig["loadavg_before"] = load_before
    fig["loadavg_after"] = os.getloadavg()
    fig["clients"] = clients
    fig["generator"] = generator
    api_pct = cpu.get("api")
    fig["api_cpu_us_per_request"] = (
        None if api_pct is None or not fig["requests"] else 1e4 * api_pct / fig["req_per_s"]
    )
    return fig


# --- cold latest (issue 15): new chargers asked for at once ---------------------------------

TARGET_COLD_LATEST_P99_MS: Final = 50.0


def cold_latest(
    stack: Stack, influx: Influx, url: str, seq0: int, generator: str, a: argparse.Namespace
) -> dict[str, Any]:
    """``--cold-chargers`` new chargers stored through the pipeline, then at once (the mirror
    has not settled, let alone confirmed, any of them) ``--clients`` clients ask their
    ``latest`` in ``--cold-seconds`` consecutive 1-second windows: p99 per window.

    The new ids are the benchmark's prefix with one digit more than the others (disjoint from
    them, and the load generator's id pattern still fits)."""
    n = a.cold_chargers
    width = max(5, len(str(a.chargers - 1))) + 1
    ids = [f"{CHARGER_PREFIX}{i:0{width}d}" for i in range(n)]
    log(f"cold latest: {n:,} new chargers through MQTT -> bridge -> InfluxDB ...")
    stored_s = load_latest(stack, influx, ids, seq0, a.timeout)
    log(f"cold latest: stored in {stored_s:.1f}s; {a.clients} clients at once, "
        f"{a.cold_seconds} x 1s ...")  # fmt: skip
    window = argparse.Namespace(**{**vars(a), "duration": 1.0})
    seconds: list[dict[str, Any]] = []
    for i in range(a.cold_seconds):
        name = f"latest-cold-{i + 1}"
        fig = measure(stack, influx, name, url, (n, width, "latest"), a.clients, generator, window)
        seconds.append({k: fig[k] for k in ("req_per_s", "p50_ms", "p99_ms", "max_ms", "errors",
                                            "influx_queries")})  # fmt: skip
        log(f"  second {i + 1}: {fig['req_per_s']:,.0f} req/s, p50 {fig['p50_ms']:.1f} ms, "
            f"p99 {fig['p99_ms']:.1f} ms (target <= {TARGET_COLD_LATEST_P99_MS:g}: "
            f"{verdict(fig['p99_ms'] <= TARGET_COLD_LATEST_P99_MS)}), "
            f"{fig['influx_queries']} InfluxDB queries, {fig['errors']} errors")  # fmt: skip
    return {"chargers": n, "stored_s": stored_s, "clients": a.clients, "seconds": seconds}


def run(a: argparse.Namespace) -> dict[str, Any]:
    generator = a.generator
    if generator == "auto":
        generator = "wrk" if wrk_binary() else "python"
        if generator == "python":
            log(f"wrk not found ({WRK_INSTALL}): using the Python generator (aiohttp, uvloop)")
    elif generator == "wrk" and wrk_binary() is None:
        raise SystemExit(f"bench: --generator wrk, but wrk is not installed ({WRK_INSTALL})")
    ids, width = charger_ids(a.chargers)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    log(f"working directory {work}; load average {os.getloadavg()}")
    fig: dict[str, Any] = {
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "generator": generator,
        "clients": a.clients,
        "duration_s": a.duration,
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
        "api_env": dict(item.split("=", 1) for item in a.api_env),
        "history_query": HISTORY_QUERY,
        "latest_trust_s": trust_s(dict(item.split("=", 1) for item in a.api_env)),
        "targets": {
            "latest_req_per_s": TARGET_LATEST_RPS,
            "latest_p99_ms": TARGET_LATEST_P99_MS,
            "history_p99_ms": TARGET_HISTORY_P99_MS,
        },
    }
    try:
        with running_stack(work) as stack:
            influx = Influx(stack.influx_url)
            try:
                influx.query(f'CREATE DATABASE "{DATABASE}"')
                bridge_env = {
                    "TELEMETRY_BRIDGE_LIVE_MAX_RATE": f"{a.live_max_rate:g}",
                    **dict(item.split("=", 1) for item in a.bridge_env),
                }
                start_bridge(stack, bridge_env, None)
                seq0 = 1
                if a.history_chargers:
                    log(
                        f"history: {a.history_chargers} chargers x {a.days} d of 1-minute points, "
                        "line protocol straight to InfluxDB (much faster than through MQTT) ..."
                    )
                    fig["history_load"] = load_history(
                        influx,
                        ids[: a.history_chargers],
                        a.days,
                        datetime.now(UTC),
                        a.writers,
                        a.timeout,
                    )
                    seq0 = fig["history_load"]["seq_next"]
                    log(f"  {fig['history_load']['points_per_s']:,.0f} points/s")
                log(f"latest: {a.chargers:,} readings through MQTT -> bridge -> InfluxDB ...")
                fig["latest_load_s"] = load_latest(stack, influx, ids, seq0, a.timeout)
                influxd = next(p for p in stack.procs if p.name == "influxd")
                fig["influx_quiet_wait_s"] = wait_quiet(influxd, 10.0, a.timeout)
                api, url = start_api(stack, fig["api_env"])
                t0 = time.monotonic()
                wait_for(
                    f"the API's mirror to hold {a.chargers:,} chargers",
                    lambda: mirror_size(url) >= a.chargers,
                    a.timeout,
                    0.5,
                )
                fig["mirror_fill_s"] = time.monotonic() - t0
                fig["mirror_chargers"] = mirror_size(url)
                # A mirrored value younger than LIVE_SETTLE_S is checked against InfluxDB on
                # every request and not marked confirmed: touch the chargers once it settled.
                time.sleep(settle_s(fig["api_env"]) + 0.5)
                log("touching every charger's latest once (InfluxDB confirms the mirror) ...")
                meter = CpuMeter({p.name: p for p in stack.procs if p.name in {"api", "influxd"}})
                meter.start()
                t0 = time.monotonic()
                touched = asyncio.run(asyncio.wait_for(_touch_all(url, ids, 16), a.timeout))
                fig["touch_all"] = {
                    "seconds": time.monotonic() - t0,
                    "answers": dict(touched),
                    "cpu_percent_of_one_core": meter.stop("bench (touch client)"),
                }
                check_answers(url, ids[-1], ids[0], a.history_chargers)
                log(f"measuring latest: {a.clients} clients, {a.duration:g}s, {generator} ...")
                t_latest = time.monotonic()
                fig["latest"] = measure(
                    stack, influx, "latest", url, (a.chargers, width, "latest"), a.clients,
                    generator, a,
                )  # fmt: skip
                fig["latest"]["since_touch_start_s"] = time.monotonic() - t0
                fig["latest"]["phase_s"] = time.monotonic() - t_latest
                if a.history_chargers:
                    hc = a.history_clients or a.clients
                    # The first request of each chart builds its page (HISTORY_CACHE_S): measured
                    # on its own, all H at once with hc clients (an API restart under full load),
                    # then the steady state the phase measures.
                    log(f"cold history: each of {a.history_chargers} charts once, {hc} clients ...")
                    paths = [
                        f"/v1/chargers/{cid}/history?{HISTORY_QUERY}"
                        for cid in ids[: a.history_chargers]
                    ]
                    t_cold = time.monotonic()
                    cold = asyncio.run(asyncio.wait_for(_first_requests(url, paths, hc), a.timeout))
                    fig["history_cold"] = {
                        "requests": len(cold),
                        "clients": hc,
                        "seconds": time.monotonic() - t_cold,
                        "p50_ms": statistics.median(cold),
                        "max_ms": max(cold),
                    }
                    log(f"measuring history: {hc} clients, {a.duration:g}s ...")
                    fig["history"] = measure(
                        stack,
                        influx,
                        "history",
                        url,
                        (a.history_chargers, width, f"history?{HISTORY_QUERY}"),
                        hc,
                        generator,
                        a,
                    )
                if a.cold_chargers:
                    seq_cold = seq0 + a.chargers
                    fig["latest_cold"] = cold_latest(stack, influx, url, seq_cold, generator, a)
                api_rss = Path(f"/proc/{api.pid}/status").read_text()
                fig["api_rss_mb"] = next(
                    int(line.split()[1]) / 1024
                    for line in api_rss.splitlines()
                    if line.startswith("VmRSS:")
                )
                return fig
            finally:
                influx.close()
    finally:
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------


def _answered(answers: dict[str, int]) -> int:
    return max(1, sum(answers.values()))


def print_report(fig: dict[str, Any], out: Callable[[str], None] = print) -> None:
    la = fig["loadavg_start"]
    rows: list[tuple[str, str, str]] = [
        ("cores (os.cpu_count())", str(fig["cores"]), "shared with other work"),
        ("load average at start (1/5/15 min)", f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}", ""),
        (
            "load generator",
            fig["generator"],
            "" if fig["generator"] == "wrk" else f"aiohttp; wrk: {WRK_INSTALL}",
        ),
        (
            "API server",
            "uvicorn, 1 process",
            f"uvloop {'yes' if fig['uvloop'] else 'no'}, httptools "
            f"{'yes' if fig['httptools'] else 'no'}"
            + (f"; env {fig['api_env']}" if fig["api_env"] else ""),
        ),
    ]
    hl = fig.get("history_load")
    if hl is not None:
        rows.append(
            (
                f"history loaded ({hl['chargers']} chargers x {hl['days']} d, 1 min)",
                f"{hl['points']:,} points",
                f"{hl['points_per_s']:,.0f} points/s: line protocol straight to InfluxDB, "
                f"{hl['lines_per_write']:,}-line writes, {hl['writers']} writers (not via MQTT)",
            )
        )
    rows.append(
        (
            "latest loaded through MQTT -> bridge -> InfluxDB",
            f"{fig['mirror_chargers']:,} chargers",
            f"stored in {fig['latest_load_s']:.1f} s; API mirror filled in "
            f"{fig['mirror_fill_s']:.1f} s",
        )
    )
    rows.append(
        (
            "touch every latest once before measuring",
            f"{fig['touch_all']['seconds']:.1f} s",
            f"answers by source {fig['touch_all']['answers']}",
        )
    )
    touch = fig["touch_all"]
    for name in ("api", "influxd"):
        pct = touch["cpu_percent_of_one_core"].get(name)
        if pct is not None:
            per_req = pct / 100 * touch["seconds"] / _answered(touch["answers"]) * 1e6
            rows.append(
                (
                    f"  {name} CPU per latest answered via InfluxDB",
                    f"{per_req:,.0f} us",
                    f"{pct:.0f}% of one core during the touch",
                )
            )
    cold = fig.get("history_cold")
    if cold is not None:
        rows.append(
            (
                f"history cold start: each of {cold['requests']} charts once, "
                f"{cold['clients']} clients",
                f"{cold['seconds']:.1f} s",
                f"p50 {cold['p50_ms']:.0f} ms, max {cold['max_ms']:.0f} ms: every page built "
                "from InfluxDB (then cached for HISTORY_CACHE_S)",
            )
        )
    for kind in ("latest", "history"):
        ph = fig.get(kind)
        if ph is None:
            continue
        label = (
            "GET latest (random of all chargers)"
            if kind == "latest"
            else "GET history 24 h, 5 m means (random of H)"
        )
        p99_target = TARGET_LATEST_P99_MS if kind == "latest" else TARGET_HISTORY_P99_MS
        rps_note = (
            f"target >= {TARGET_LATEST_RPS:,.0f}: {verdict(ph['req_per_s'] >= TARGET_LATEST_RPS)}"
            if kind == "latest"
            else ""
        )
        errs = f"{ph['errors']:,} errors of {ph['requests']:,}"
        lb, lafter = ph["loadavg_before"], ph["loadavg_after"]
        rows += [
            (f"{label}, {ph['clients']} clients", f"{ph['req_per_s']:,.0f} req/s", rps_note),
            ("  p50", f"{ph['p50_ms']:.2f} ms", errs),
            (
                "  p99",
                f"{ph['p99_ms']:.2f} ms",
                f"target <= {p99_target:.0f} ms: "
                + verdict(ph["p99_ms"] <= p99_target and ph["errors"] == 0),
            ),
            ("  p99.9 / max", f"{ph['p999_ms']:.1f} / {ph['max_ms']:.1f} ms", ""),
            (
                "  InfluxDB queries during the phase",
                f"{ph['influx_queries']:,}",
                f"{ph['influx_queries'] / max(1, ph['requests']):.1%} of requests",
            ),
            (
                "  load average before / after",
                f"{lb[0]:.2f} / {lafter[0]:.2f}",
                "1 min",
            ),
        ]
        if kind == "latest":
            trust, since = fig["latest_trust_s"], ph["since_touch_start_s"]
            rows.append(
                (
                    "  mirror confirmations still valid",
                    "yes" if since < trust else "NO",
                    f"phase ended {since:.0f} s after the touch began; LATEST_TRUST_S {trust:g} s "
                    f"(steady state: ~{fig['mirror_chargers'] / trust:,.0f} InfluxDB checks/s "
                    "for ids spread over all chargers)",
                )
            )
        for name, pct in ph["cpu_percent_of_one_core"].items():
            if pct is not None:
                rows.append((f"  CPU {name}", f"{pct:.0f}%", "of one core"))
        per_req = ph["api_cpu_us_per_request"]
        if per_req is not None:
            rows.append(
                (
                    "  API CPU per request",
                    f"{per_req:,.0f} us",
                    f"one core serves at most ~{1e6 / per_req:,.0f} req/s at this cost",
                )
            )
    rows.append(("API resident memory at the end", f"{fig['api_rss_mb']:.0f} MB", "VmRSS"))
    print_table(rows, out)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.api_latency",
        description="Latency and throughput of the query API's latest and history endpoints "
        "under concurrent clients. Starts and stops its own servers on loopback.",
    )
    p.add_argument("--chargers", type=int, default=10_000, help="chargers with a latest value")
    p.add_argument(
        "--history-chargers", type=int, default=100, help="of them, chargers with history (0: none)"
    )
    p.add_argument("--days", type=int, default=30, help="days of 1-minute history per charger")
    p.add_argument("--clients", type=int, default=50, help="concurrent keep-alive clients")
    p.add_argument(
        "--history-clients", type=int, default=0, help="clients of the history phase (0: --clients)"
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each measured phase")
    p.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help=f"load generator; auto: wrk if installed ({WRK_INSTALL}), else Python (aiohttp)",
    )
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each one a core)")
    p.add_argument("--request-timeout", type=float, default=10.0, help="per request, seconds")
    p.add_argument("--writers", type=int, default=2, help="concurrent history write requests")
    p.add_argument(
        "--live-max-rate",
        type=float,
        default=5_000.0,
        help="TELEMETRY_BRIDGE_LIVE_MAX_RATE while loading (default 500/s would take 20 s "
        "for 10,000 chargers; 0: no budget)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each load/wait phase")
    p.add_argument(
        "--api-env", action="append", default=[], metavar="KEY=VALUE", help="extra API setting"
    )
    p.add_argument(
        "--bridge-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra bridge setting",
    )
    p.add_argument(
        "--cold-chargers",
        type=int,
        default=2_000,
        help="new chargers stored at the end, then asked for at once (cold latest; 0: skip)",
    )
    p.add_argument(
        "--cold-seconds", type=int, default=5, help="1-second windows of the cold latest phase"
    )
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--loadgen", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.loadgen is not None:
        return a
    if a.chargers < 1 or not 0 <= a.history_chargers <= a.chargers:
        p.error("--chargers must be positive and --history-chargers within 0..--chargers")
    if (
        a.days < 2
        or a.clients < 1
        or a.history_clients < 0
        or a.duration <= 0
        or a.writers < 1
        or a.wrk_threads < 1
    ):
        p.error("--days >= 2 (the history query spans 24 h); --clients, --duration, --writers "
                "and --wrk-threads positive")  # fmt: skip
    for prefix, items in (("TELEMETRY_API_", a.api_env), ("TELEMETRY_BRIDGE_", a.bridge_env)):
        for item in items:
            if "=" not in item or not item.startswith(prefix):
                p.error(f"{item!r}: expected {prefix}NAME=VALUE")
    return a


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.loadgen is not None:
        loadgen_main(a.loadgen)
        return
    # Ctrl-C and SIGTERM unwind through every ``finally`` that stops a process (explicitly
    # installed: a shell starting us in the background would have SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fig = run(a)
    except KeyboardInterrupt:
        print("bench: interrupted; every process was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    print_report(fig)
    if a.json is not None:
        a.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {a.json}")


if __name__ == "__main__":
    main()
