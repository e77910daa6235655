"""Sessions API benchmark: one charger's sessions over 30 days under 50 connections, and the
fleet's CSV export of one day, with the API's memory while it streams.

``.venv/bin/python -m bench.sessions_api [--chargers N] [--fleet 10000] [--per-day 10]``

1. starts InfluxDB 1.x (and Mosquitto, unused) and writes, as line protocol straight into
   ``keep.sessions`` (the points the sessions job writes, docs/design.md#sessions), the
   sessions of
   - N chargers (default 100), ``--per-day`` (10) a day over the last 30 days but the fleet's
     day (about 280 each), and
   - a fleet of F chargers (default 10,000, in gateways of 1,000) with ``--per-day`` sessions
     each on one day, yesterday (UTC): 100,000 sessions;
2. **one charger, 30 days**: ``GET /v1/chargers/{id}/sessions?start=-30d&limit=1000`` on random
   chargers of the N, ``--clients`` (50) keep-alive connections for ``--duration`` seconds with
   ``wrk`` (else the Python generator), after each charger's answer was asked once (its cold
   build, reported on its own; the API then reuses answers for ``SESSIONS_CACHE_S`` and
   rebuilds them as they expire, while the load runs). Goal p99 <= 100 ms;
3. **fleet export**: ``GET /v1/sessions?start=DAY&end=DAY+1d&format=csv`` read whole as a
   stream, once for one gateway (1,000 chargers: ``--per-day`` x 1,000 sessions) and once for
   the whole fleet (x F), each from an API process of its own started for it: the time to the
   first byte and to the last (goal for the fleet: <= 10 s), the rows, and the API's peak RSS
   (VmHWM of /proc/PID/status, which also covers its start) before and after: memory must not
   grow with the export (the API streams InfluxDB's chunked answer).

A script, not a test: it prints figures and asserts nothing about them. Every process it starts
is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from bench.harness import cli
from bench.harness.cli import log
from bench.harness.http_load import (
    WRK_INSTALL,
    Load,
    Target,
    run_python,
    run_wrk,
    warm_up,
    wrk_binary,
)
from bench.harness.influx import Influx
from bench.harness.procstat import CpuMeter, proc_status_kb, wait_quiet
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import BIN, DATABASE, Stack, running_stack, unique_ports, wait_for
from query_api.settings import ApiSettings
from telemetry_common.settings import env_for
from telemetry_common.storage import KEEP_RP, SESSION_MEASUREMENT

READ_KEY: Final = "bench-read-" + "r" * 24
HIST_PREFIX: Final = "bench-hist-cp"
FLEET_PREFIX: Final = "bench-fleet-cp"
WIDTH: Final = 5
GATEWAY_SIZE: Final = 1_000
LINES_PER_WRITE: Final = 10_000
QUERY: Final = "sessions?start=-30d&limit=1000"
GOAL_P99_MS: Final = 100.0
GOAL_EXPORT_S: Final = 10.0
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
DAY: Final = timedelta(days=1)


def ns(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


def session_line(charger_id: str, gateway_id: str, n: int, started: datetime) -> str:
    """One ended session as the sessions job writes it (docs/design.md#sessions): 30 to 75
    minutes, 7 to 22 kWh, one reading a minute."""
    minutes = 30 + n * 7 % 46
    ended = started + timedelta(minutes=minutes)
    start_wh = 1_000_000.0 + n * 15_000.0
    energy = 7_000.0 + n * 1_531 % 15_000
    tags = f"charger_id={charger_id},connector_id=1,evse_id=1,gateway_id={gateway_id}"
    return (
        f"{SESSION_MEASUREMENT},{tags} "
        f'transaction_id="{n}",state="ended",end_cause="stop",ended_at={ns(ended)}i,'
        f"meter_start_wh={start_wh},meter_stop_wh={start_wh + energy},energy_wh={energy},"
        f"max_power_w=22000.0,duration_s={minutes * 60.0},"
        f'stop_reason="EVDisconnected",id_tag_hash="{n % 997:032x}",readings={minutes + 1}i,'
        f'flags="",first_seq={n * 100}i,last_seq={n * 100 + minutes}i,'
        f"last_reading_at={ns(ended)}i,computed_at={ns(ended) + 60_000_000_000}i "
        f"{ns(started)}"
    )


def check_session_line() -> None:
    """Fail early if :func:`session_line` ever drifts from the sessions job's own points
    (``sessions.compute.to_line``)."""
    from sessions.compute import Session, to_line

    started = datetime(2026, 5, 1, 12, tzinfo=UTC)
    ours = session_line("cp-1", "gw-1", 3, started)
    minutes = 30 + 3 * 7 % 46
    ended = started + timedelta(minutes=minutes)
    start_wh, energy = 1_000_000.0 + 3 * 15_000.0, 7_000.0 + 3 * 1_531 % 15_000
    theirs = to_line(
        Session(
            charger_id="cp-1", gateway_id="gw-1", evse_id=1, connector_id=1,
            transaction_id="3", state="ended", started_at_ns=ns(started),
            ended_at_ns=ns(ended), end_cause="stop", meter_start_wh=start_wh,
            meter_stop_wh=start_wh + energy, energy_wh=energy, max_power_w=22_000.0,
            duration_s=minutes * 60.0, stop_reason="EVDisconnected",
            id_tag_hash=f"{3:032x}", readings=minutes + 1, flags=(), first_seq=300,
            last_seq=300 + minutes, last_reading_at_ns=ns(ended),
            computed_at_ns=ns(ended) + 60_000_000_000,
        )
    )  # fmt: skip

    def fields(line: str) -> tuple[str, dict[str, str], str]:
        head, body, ts = line.split(" ")
        return head, dict(f.split("=", 1) for f in body.split(",")), ts

    if fields(ours) != fields(theirs):
        raise RuntimeError(f"bench session point differs from the job's:\n{ours}\n{theirs}")


def fleet_day() -> datetime:
    """Yesterday, 00:00 UTC: the day the fleet's sessions are on."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - DAY


def write_sessions(influx: Influx, a: argparse.Namespace) -> dict[str, Any]:
    influx.query(f'CREATE DATABASE "{DATABASE}"')
    influx.query(f'CREATE RETENTION POLICY "{KEEP_RP}" ON "{DATABASE}" DURATION INF REPLICATION 1')
    lines: list[str] = []
    written = 0
    t0 = time.monotonic()

    def flush(force: bool = False) -> None:
        nonlocal written
        if lines and (force or len(lines) >= LINES_PER_WRITE):
            r = influx.http.post(
                "/write",
                params={"db": DATABASE, "rp": KEEP_RP, "precision": "ns"},
                content="\n".join(lines).encode(),
            )
            if r.status_code != 204:
                raise RuntimeError(f"write refused ({r.status_code}): {r.text[:300]}")
            written += len(lines)
            lines.clear()

    day = fleet_day()
    step = DAY / a.per_day
    for i in range(a.fleet):
        charger = f"{FLEET_PREFIX}{i:0{WIDTH}d}"
        gateway = f"bench-gw-{i // GATEWAY_SIZE:02d}"
        offset = timedelta(seconds=i * 7 % max(1, int(step.total_seconds()) - 3600))
        for k in range(a.per_day):
            lines.append(session_line(charger, gateway, k, day + k * step + offset))
            flush()
    start = datetime.now(UTC) - timedelta(days=30) + timedelta(minutes=5)
    history = 0
    for i in range(a.chargers):
        charger = f"{HIST_PREFIX}{i:0{WIDTH}d}"
        for k in range(30 * a.per_day):
            at = start + k * step + timedelta(seconds=i * 11 % 600)
            if at > datetime.now(UTC) - timedelta(hours=2):
                break
            if day <= at < day + DAY:
                continue  # the fleet's day holds the fleet's sessions only
            lines.append(session_line(charger, "bench-gw-hist", k, at))
            history += 1
            flush()
    flush(force=True)
    seconds = time.monotonic() - t0
    return {
        "fleet_sessions": a.fleet * a.per_day,
        "history_sessions": history,
        "points": written,
        "seconds": seconds,
        "points_per_s": written / seconds,
    }


def start_api(stack: Stack, name: str) -> tuple[Any, str]:
    """``telemetry-api`` without a broker, once ``/readyz`` answers 200."""
    (port,) = unique_ports(1)
    env = env_for(
        ApiSettings,
        host="127.0.0.1",
        port=port,
        influx={"url": stack.influx_url, "database": DATABASE, "timeout_s": 30.0},
        log_format="json",
        keys={"read": READ_KEY},
    )
    api = stack.start(name, [str(BIN / "telemetry-api")], env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the API to be ready", ready, 60)
    return api, url


def check_charger(url: str, a: argparse.Namespace) -> dict[str, Any]:
    """One charger's 30 days, once, before the load: what one answer holds."""
    t0 = time.perf_counter()
    r = httpx.get(
        f"{url}/v1/chargers/{HIST_PREFIX}{0:0{WIDTH}d}/{QUERY}",
        headers={"X-API-Key": READ_KEY},
        timeout=60,
    )
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{QUERY} answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    return {"items": len(body["items"]), "truncated": body.get("truncated"), "first_ms": ms}


def measure_charger(stack: Stack, a: argparse.Namespace) -> dict[str, Any]:
    api, url = start_api(stack, "api-charger")
    try:
        answer = check_charger(url, a)
        log(
            f"one charger: {answer['items']} sessions per answer; {a.clients} clients, "
            f"{a.duration:g}s ..."
        )
        target = Target(url, HIST_PREFIX, a.chargers, WIDTH, QUERY, READ_KEY)
        cold = warm_up(target)
        load = Load(a.clients, a.duration, a.request_timeout, a.wrk_threads)
        meter = CpuMeter({p.name: p for p in stack.procs if p.name in ("influxd", api.name)})
        meter.start()
        runner = run_wrk if a.generator == "wrk" else run_python
        fig = runner(stack, "load-charger", target, load)
        fig["cpu_percent_of_one_core"] = meter.stop(f"load generator ({a.generator})")
        fig["answer"] = answer
        fig["cold"] = cold
    finally:
        api.stop(timeout=10)
    return fig


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def measure_export(
    stack: Stack, label: str, params: dict[str, str], expected: int, repeat: int = 1
) -> dict[str, Any]:
    """The CSV export (``expected`` sessions) read whole as a stream from a fresh API process:
    time to the first and the last byte, rows, the process's peak RSS before and after, and its
    RSS at each quarter of the rows (growing, or flat), and after each of ``repeat - 1`` more
    exports by the same process (memory kept from one export to the next, or not)."""
    api, url = start_api(stack, f"api-export-{label}")
    try:
        assert api.pid is not None
        hwm_before = proc_status_kb(api.pid, "VmHWM")
        first = _export_once(url, api.pid, params, expected)
        #: VmRSS after each further export of the same process (memory kept per export?).
        again = [
            _export_once(url, api.pid, params, expected)["api_rss_quarters_mb"][-1]
            for _ in range(repeat - 1)
        ]
        hwm_after = proc_status_kb(api.pid, "VmHWM")
    finally:
        api.stop(timeout=10)
    return first | {
        "params": params,
        "api_hwm_before_mb": _mb(hwm_before),
        "api_hwm_after_mb": _mb(hwm_after),
        "api_rss_after_repeats_mb": again,
    }


def _export_once(url: str, pid: int, params: dict[str, str], expected: int) -> dict[str, Any]:
    #: VmRSS after a quarter, a half, three quarters of the rows, and at the end.
    rss_mb: list[float | None] = []
    rows = 0
    size = 0
    first_byte: float | None = None
    t0 = time.perf_counter()
    with (
        httpx.Client(timeout=120) as http,
        http.stream(
            "GET",
            f"{url}/v1/sessions",
            params={**params, "format": "csv"},
            headers={"X-API-Key": READ_KEY},
        ) as r,
    ):
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"export answered {r.status_code}: {r.text[:300]}")
        quarter = 0
        for chunk in r.iter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            size += len(chunk)
            rows += chunk.count(b"\n")
            if rows >= (quarter + 1) * expected / 4 and quarter < 3:
                quarter += 1
                rss_mb.append(_mb(proc_status_kb(pid, "VmRSS")))
    seconds = time.perf_counter() - t0
    rss_mb.append(_mb(proc_status_kb(pid, "VmRSS")))
    return {
        "sessions": rows - 1,  # the header row
        "bytes": size,
        "first_byte_s": first_byte,
        "seconds": seconds,
        "sessions_per_s": (rows - 1) / seconds if seconds else None,
        "api_rss_quarters_mb": rss_mb,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    if a.generator == "auto":
        a.generator = "wrk" if wrk_binary() else "python"
    if a.generator == "wrk" and wrk_binary() is None:
        raise SystemExit(f"bench: wrk is not installed ({WRK_INSTALL})")
    fig: dict[str, Any] = {
        "clients": a.clients,
        "duration_s": a.duration,
        "generator": a.generator,
        "chargers": a.chargers,
        "fleet": a.fleet,
        "per_day": a.per_day,
    }
    with cli.workdir("bench-sessions-api-", a.keep) as work, running_stack(work) as stack:
        influx = Influx(stack.influx_url)
        try:
            check_session_line()
            log(f"writing sessions: {a.fleet:,} fleet chargers, {a.chargers} over 30 days ...")
            fig["load"] = write_sessions(influx, a)
            log(f"  {fig['load']['points']:,} points in {fig['load']['seconds']:.1f}s")
            fig["influx_quiet_wait_s"] = wait_quiet(stack.proc("influxd").pid, 10.0, a.timeout)
            if not a.no_charger:
                fig["charger"] = measure_charger(stack, a)
            day = fleet_day()
            window = {"start": day.isoformat(), "end": (day + DAY).isoformat()}
            fig["exports"] = []
            for label, params, expected in (
                ("gateway", {**window, "gateway_id": "bench-gw-00"}, GATEWAY_SIZE * a.per_day),
                ("fleet", window, a.fleet * a.per_day),
            ):
                log(f"export: {label} ...")
                figures = measure_export(stack, label, params, expected, a.repeat)
                fig["exports"].append({"label": label, **figures})
        finally:
            influx.close()
    return fig


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def report(fig: dict[str, Any]) -> None:
    load = fig["load"]
    rows: list[Row] = [
        (
            "sessions written",
            f"{load['points']:,}",
            f"{load['fleet_sessions']:,} fleet (one day) + {load['history_sessions']:,} over "
            f"30 days; {load['points_per_s']:,.0f}/s",
        ),
    ]
    if "charger" in fig:
        c = fig["charger"]
        rows.append((
            f"one charger, 30 days, {fig['clients']} clients: p99",
            f"{c['p99_ms']:.1f} ms",
            f"goal <= {GOAL_P99_MS:g} ms: {verdict(c['p99_ms'] <= GOAL_P99_MS)}; p50 "
            f"{c['p50_ms']:.1f} ms, {c['req_per_s']:,.0f} req/s, {c['errors']} errors, "
            f"{c['answer']['items']} sessions per answer",
        ))  # fmt: skip
        rows.append((
            "  each charger's first answer (cold)",
            f"{c['cold']['p50_ms']:.1f} ms",
            f"p50, max {c['cold']['max_ms']:.1f} ms, {c['cold']['requests']} chargers one "
            "after another before the load (the API caches an answer SESSIONS_CACHE_S, 5 s)",
        ))  # fmt: skip
    for e in fig["exports"]:
        goal = (
            f"goal <= {GOAL_EXPORT_S:g} s: {verdict(e['seconds'] <= GOAL_EXPORT_S)}; "
            if e["label"] == "fleet"
            else ""
        )
        rows.append((
            f"CSV export, {e['label']}: {e['sessions']:,} sessions",
            f"{e['seconds']:.2f} s",
            f"{goal}first byte {_f(e['first_byte_s'], '{:.2f}')} s, "
            f"{e['bytes'] / 1e6:.1f} MB, {_f(e['sessions_per_s'], '{:,.0f}')}/s",
        ))  # fmt: skip
        rows.append((
            f"  API peak RSS (VmHWM), {e['label']}",
            f"{_f(e['api_hwm_after_mb'])} MB",
            f"{_f(e['api_hwm_before_mb'])} MB before the export (after start); RSS at each "
            f"quarter of the rows: {' / '.join(_f(x) for x in e['api_rss_quarters_mb'])} MB",
        ))  # fmt: skip
        if e["api_rss_after_repeats_mb"]:
            rows.append((
                f"  API RSS after each repeat, {e['label']}",
                " / ".join(_f(x) for x in e["api_rss_after_repeats_mb"]) + " MB",
                "the same export again from the same process (--repeat)",
            ))  # fmt: skip
    print_table(rows)


def main() -> None:
    p = cli.parser("bench.sessions_api", __doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--chargers", type=int, default=100, help="chargers with 30 days of sessions")
    p.add_argument("--fleet", type=int, default=10_000, help="chargers of the fleet's day")
    p.add_argument("--per-day", type=int, default=10, help="sessions a day per charger")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the load")
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-charger", action="store_true", help="only the exports")
    p.add_argument(
        "--repeat", type=int, default=1, help="each export this many times from one API process"
    )
    p.add_argument("--timeout", type=float, default=300.0)
    cli.add_output_options(p)
    a = p.parse_args()
    if a.fleet < GATEWAY_SIZE or a.fleet % GATEWAY_SIZE:
        p.error(f"--fleet must be a multiple of {GATEWAY_SIZE:,}")
    if not 1 <= a.per_day <= 24:
        p.error("--per-day must be within 1..24")
    cli.run_and_report(a, run, report)


if __name__ == "__main__":
    main()
