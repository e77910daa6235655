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
import os
import queue
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bench.harness import cli
from bench.harness.cli import log
from bench.harness.http_load import (
    WRK_INSTALL,
    Load,
    Target,
    loadgen_main,
    run_python,
    run_wrk,
    wrk_binary,
)
from bench.harness.influx import Influx
from bench.harness.mqtt import Connection
from bench.harness.procstat import CpuMeter, proc_status_kb, wait_quiet
from bench.harness.readings import LINE_TAIL, batch_payload, check_line, reading, series
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import (
    DATABASE,
    TOPIC_ROOT,
    Stack,
    running_stack,
    start_api,
    start_bridge,
    wait_for,
)
from bridge.settings import BridgeSettings
from query_api.settings import ApiSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for, env_name
from telemetry_common.topics import Topics

GATEWAY: Final = "bench-gw"
READ_KEY: Final = "bench-read-" + "r" * 24
INGEST_KEY: Final = "bench-ingest-" + "i" * 24
CHARGER_PREFIX: Final = f"{GATEWAY}-cp"
LINES_PER_WRITE: Final = 5_000
MQTT_BATCH: Final = 500
HISTORY_QUERY: Final = "start=-24h&every=5m&agg=mean"

TARGET_LATEST_RPS: Final = 3_000.0
TARGET_LATEST_P99_MS: Final = 20.0
TARGET_HISTORY_P99_MS: Final = 100.0


def charger_ids(n: int) -> tuple[list[str], int]:
    """The ids of ``n`` chargers and the width of their zero-padded number."""
    width = max(5, len(str(n - 1)))
    return [f"{CHARGER_PREFIX}{i:0{width}d}" for i in range(n)], width


# --- the API ---------------------------------------------------------------------------------


def api_setting(api_env: dict[str, str], name: str) -> float:
    """A setting of the API as ``--api-env`` gives it, else its default."""
    default = ApiSettings.model_fields[name].default
    return float(api_env.get(env_name(ApiSettings, name), default))


def settle_s(api_env: dict[str, str]) -> float:
    """The API's LIVE_SETTLE_S (its default unless ``--api-env`` sets it)."""
    return api_setting(api_env, "live_settle_s")


def trust_s(api_env: dict[str, str]) -> float:
    """The API's LATEST_TRUST_S: how long a value InfluxDB confirmed is served from memory."""
    return api_setting(api_env, "latest_trust_s")


def mirror_size(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("telemetry_api_mirror_chargers "):
            return int(float(line.split()[1]))
    return 0


# --- data ------------------------------------------------------------------------------------


def load_history(
    influx: Influx, ids: list[str], days: int, end: datetime, writers: int, timeout: float
) -> dict[str, Any]:
    """``days`` of 1-minute points for each of ``ids``, ending before ``end``, written to InfluxDB
    as line protocol in 5,000-line requests: one thread builds, ``writers`` threads send."""
    check_line(GATEWAY, f"{CHARGER_PREFIX}0")
    minutes = days * 1440
    t_end = int(end.replace(second=0, microsecond=0).timestamp()) - 60
    t_first = t_end - (minutes - 1) * 60
    powers = [f"{7000.0 + 10 * (k % 37)!r}" for k in range(37)]
    bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=2 * writers)
    errors: list[BaseException] = []
    stop = threading.Event()
    hard_end = time.monotonic() + timeout

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
                head = series(GATEWAY, cid)
                for m in range(minutes):
                    lines.append(
                        f"{head}energy_wh={m * 120}.0,power_w={powers[m % 37]},{LINE_TAIL}{seq}i "
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


def load_latest(stack: Stack, influx: Influx, ids: list[str], seq0: int, timeout: float) -> float:
    """One reading per charger, now, through the pipeline; returns seconds until all stored."""
    ts = format_ts(datetime.now(UTC))
    payloads: list[bytes] = []
    for start in range(0, len(ids), MQTT_BATCH):
        batch = ids[start : start + MQTT_BATCH]
        readings = [
            reading(cid, seq0 + start + k, ts, float(start + k)) for k, cid in enumerate(batch)
        ]
        payloads.append(batch_payload(GATEWAY, readings))
    q = f"SELECT count(seq) FROM readings WHERE gateway_id = '{GATEWAY}' AND time >= '{ts}'"
    topic = Topics(TOPIC_ROOT).readings(GATEWAY)
    t0 = time.perf_counter()
    # One gateway's MQTT 5 session over TLS, QoS 1, at most 100 publishes unacknowledged.
    pub = Connection(GATEWAY, stack.tls_port, identity=stack.identity(GATEWAY), window=100)
    try:
        deadline = time.monotonic() + timeout
        for payload in payloads:
            pub.publish(topic, payload, deadline)
        pub.wait_acked(len(payloads), deadline)
    finally:
        pub.close()
    if pub.acks.refused:
        raise RuntimeError(f"the broker refused {pub.acks.refused} publishes")
    wait_for(
        f"InfluxDB to hold the {len(ids):,} readings",
        lambda: influx.scalar(q, DATABASE) >= len(ids),
        timeout,
    )
    return time.perf_counter() - t0


async def _get_each(
    url: str, paths: list[str], concurrency: int, request_timeout: float
) -> list[tuple[httpx.Response, float]]:
    """GET each path once with ``concurrency`` clients at once; each answer with its latency
    in ms."""
    answers: list[tuple[httpx.Response, float]] = []
    todo = iter(paths)
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"X-API-Key": READ_KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for path in todo:
                t = time.perf_counter()
                r = await client.get(path, timeout=request_timeout)
                answers.append((r, (time.perf_counter() - t) * 1000))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def _touch_all(url: str, ids: list[str], concurrency: int) -> Counter[str]:
    """GET latest of every id once; counts by answer source (or HTTP status)."""
    paths = [f"/v1/chargers/{cid}/latest" for cid in ids]
    answers = await _get_each(url, paths, concurrency, 30)
    return Counter(
        r.json()["source"] if r.status_code == 200 else str(r.status_code) for r, _ in answers
    )


async def _first_requests(url: str, paths: list[str], concurrency: int) -> list[float]:
    """GET each path once with ``concurrency`` clients at once; each request's latency in ms
    (a 200 is required: the cold start of a cache is measured, not its errors)."""
    answers = await _get_each(url, paths, concurrency, 60)
    for r, _ in answers:
        r.raise_for_status()
    return [ms for _, ms in answers]


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
    n, width, suffix = target
    where = Target(url, CHARGER_PREFIX, n, width, suffix, READ_KEY)
    load = Load(clients, a.duration, a.request_timeout, a.wrk_threads)
    meter = CpuMeter(stack.named("mosquitto", "influxd", "bridge", "api"))
    load_before = os.getloadavg()
    queries_before = influx.queries_served()
    meter.start()
    run_load = run_wrk if generator == "wrk" else run_python
    fig = run_load(stack, name, where, load)
    cpu = meter.stop(f"load generator ({generator})")
    fig["influx_queries"] = influx.queries_served() - queries_before - 1
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


def pick_generator(choice: str) -> str:
    """``wrk`` or ``python``: ``auto`` takes wrk when it is installed."""
    if choice == "auto":
        choice = "wrk" if wrk_binary() else "python"
        if choice == "python":
            log(f"wrk not found ({WRK_INSTALL}): using the Python generator (aiohttp, uvloop)")
    elif choice == "wrk" and wrk_binary() is None:
        raise SystemExit(f"bench: --generator wrk, but wrk is not installed ({WRK_INSTALL})")
    return choice


def load_data(
    stack: Stack, influx: Influx, a: argparse.Namespace, ids: list[str], fig: dict[str, Any]
) -> None:
    """The bridge, the history straight to InfluxDB, the latest values through MQTT; then until
    InfluxDB's compactions are quiet."""
    influx.query(f'CREATE DATABASE "{DATABASE}"')
    live_rate = env_for(BridgeSettings, live_max_rate=f"{a.live_max_rate:g}")
    start_bridge(stack, live_rate | a.bridge_env)
    seq0 = 1
    if a.history_chargers:
        log(
            f"history: {a.history_chargers} chargers x {a.days} d of 1-minute points, "
            "line protocol straight to InfluxDB (much faster than through MQTT) ..."
        )
        fig["history_load"] = load_history(
            influx, ids[: a.history_chargers], a.days, datetime.now(UTC), a.writers, a.timeout
        )
        seq0 = fig["history_load"]["seq_next"]
        log(f"  {fig['history_load']['points_per_s']:,.0f} points/s")
    log(f"latest: {a.chargers:,} readings through MQTT -> bridge -> InfluxDB ...")
    fig["latest_load_s"] = load_latest(stack, influx, ids, seq0, a.timeout)
    fig["influx_quiet_wait_s"] = wait_quiet(stack.proc("influxd").pid, 10.0, a.timeout)


def start_api_mirrored(stack: Stack, a: argparse.Namespace, fig: dict[str, Any]) -> str:
    """The API, once its mirror holds every charger; its URL."""
    _, url = start_api(stack, {"read": READ_KEY, "ingest": INGEST_KEY}, a.api_env)
    t0 = time.monotonic()
    wait_for(
        f"the API's mirror to hold {a.chargers:,} chargers",
        lambda: mirror_size(url) >= a.chargers,
        a.timeout,
        0.5,
    )
    fig["mirror_fill_s"] = time.monotonic() - t0
    fig["mirror_chargers"] = mirror_size(url)
    return url


def touch_latest(stack: Stack, url: str, ids: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """Every charger's latest once (InfluxDB confirms the mirror), with the CPU it cost."""
    # A mirrored value younger than LIVE_SETTLE_S is checked against InfluxDB on every request
    # and not marked confirmed: touch the chargers once it settled.
    time.sleep(settle_s(a.api_env) + 0.5)
    log("touching every charger's latest once (InfluxDB confirms the mirror) ...")
    meter = CpuMeter(stack.named("influxd", "api"))
    meter.start()
    t0 = time.monotonic()
    touched = asyncio.run(asyncio.wait_for(_touch_all(url, ids, 16), a.timeout))
    return {
        "seconds": time.monotonic() - t0,
        "answers": dict(touched),
        "cpu_percent_of_one_core": meter.stop("bench (touch client)"),
    }


def cold_history(url: str, ids: list[str], clients: int, timeout: float) -> dict[str, Any]:
    """The first request of each chart builds its page (HISTORY_CACHE_S): all of them at once
    with ``clients`` clients (an API restart under full load)."""
    log(f"cold history: each of {len(ids)} charts once, {clients} clients ...")
    paths = [f"/v1/chargers/{cid}/history?{HISTORY_QUERY}" for cid in ids]
    t0 = time.monotonic()
    cold = asyncio.run(asyncio.wait_for(_first_requests(url, paths, clients), timeout))
    return {
        "requests": len(cold),
        "clients": clients,
        "seconds": time.monotonic() - t0,
        "p50_ms": statistics.median(cold),
        "max_ms": max(cold),
    }


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
    return {
        "chargers": n,
        "stored_s": stored_s,
        "clients": a.clients,
        "live_max_rate": a.live_max_rate,
        "seconds": seconds,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    generator = pick_generator(a.generator)
    ids, width = charger_ids(a.chargers)
    log(f"load average {os.getloadavg()}")
    fig: dict[str, Any] = {
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "generator": generator,
        "clients": a.clients,
        "duration_s": a.duration,
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
        "api_env": a.api_env,
        "history_query": HISTORY_QUERY,
        "latest_trust_s": trust_s(a.api_env),
        "targets": {
            "latest_req_per_s": TARGET_LATEST_RPS,
            "latest_p99_ms": TARGET_LATEST_P99_MS,
            "history_p99_ms": TARGET_HISTORY_P99_MS,
        },
    }
    with cli.workdir("bench-api-", a.keep) as work, running_stack(work, [GATEWAY]) as stack:
        influx = Influx(stack.influx_url)
        try:
            load_data(stack, influx, a, ids, fig)
            url = start_api_mirrored(stack, a, fig)
            t_touch = time.monotonic()
            fig["touch_all"] = touch_latest(stack, url, ids, a)
            check_answers(url, ids[-1], ids[0], a.history_chargers)
            log(f"measuring latest: {a.clients} clients, {a.duration:g}s, {generator} ...")
            t_latest = time.monotonic()
            fig["latest"] = measure(
                stack, influx, "latest", url, (a.chargers, width, "latest"), a.clients,
                generator, a,
            )  # fmt: skip
            fig["latest"]["since_touch_start_s"] = time.monotonic() - t_touch
            fig["latest"]["phase_s"] = time.monotonic() - t_latest
            if a.history_chargers:
                hc = a.history_clients or a.clients
                fig["history_cold"] = cold_history(url, ids[: a.history_chargers], hc, a.timeout)
                log(f"measuring history: {hc} clients, {a.duration:g}s ...")
                fig["history"] = measure(
                    stack, influx, "history", url,
                    (a.history_chargers, width, f"history?{HISTORY_QUERY}"), hc, generator, a,
                )  # fmt: skip
            if a.cold_chargers:
                seq_cold = fig.get("history_load", {}).get("seq_next", 1) + a.chargers
                fig["latest_cold"] = cold_latest(stack, influx, url, seq_cold, generator, a)
            fig["api_rss_mb"] = (proc_status_kb(stack.proc("api").pid or 0, "VmRSS") or 0) / 1024
            return fig
        finally:
            influx.close()


# --- report ----------------------------------------------------------------------------------


def _answered(answers: dict[str, int]) -> int:
    return max(1, sum(answers.values()))


def print_report(fig: dict[str, Any], out: Callable[[str], None] = print) -> None:
    la = fig["loadavg_start"]
    rows: list[Row] = [
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
    lc = fig.get("latest_cold")
    if lc is not None:
        rows.append(
            (
                f"GET latest of {lc['chargers']:,} chargers just stored, {lc['clients']} clients",
                f"stored in {lc['stored_s']:.1f} s",
                f"cold: the mirror trusts none of them yet (bridge live_max_rate "
                f"{lc['live_max_rate']:,.0f}/s)",
            )
        )
        for i, sec in enumerate(lc["seconds"], 1):
            rows.append(
                (
                    f"  second {i}: p99 (req/s, InfluxDB queries)",
                    f"{sec['p99_ms']:.1f} ms",
                    f"{sec['req_per_s']:,.0f} req/s, {sec['influx_queries']:,} queries, "
                    f"{sec['errors']:,} errors; target <= {TARGET_COLD_LATEST_P99_MS:g} ms: "
                    + verdict(sec["p99_ms"] <= TARGET_COLD_LATEST_P99_MS and sec["errors"] == 0),
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
    p = cli.parser(
        "bench.api_latency",
        "Latency and throughput of the query API's latest and history endpoints "
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
    live_rate = env_name(BridgeSettings, "live_max_rate")
    p.add_argument(
        "--live-max-rate",
        type=float,
        default=5_000.0,
        help=f"{live_rate} while loading (default 500/s would take 20 s "
        "for 10,000 chargers; 0: no budget)",
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
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each load/wait phase")
    cli.add_env_option(p, "--api-env", "API", ApiSettings, log_level="WARNING")
    cli.add_env_option(p, "--bridge-env", "bridge", BridgeSettings, batch_max_messages=20)
    cli.add_output_options(p)
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
    a.api_env = cli.parse_env(p, "--api-env", a.api_env, ApiSettings)
    a.bridge_env = cli.parse_env(p, "--bridge-env", a.bridge_env, BridgeSettings)
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.loadgen is not None:  # the Python load generator's process, as before the harness
        loadgen_main(a.loadgen)
        return
    cli.run_and_report(a, run, print_report)


if __name__ == "__main__":
    main()
