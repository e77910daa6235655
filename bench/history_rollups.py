"""Query API benchmark: long-range ``history`` served from the rollups under 50 connections.

``.venv/bin/python -m bench.history_rollups [--chargers N] [--minute-chargers M] [--duration S]``

1. starts InfluxDB 1.x and ``telemetry-api`` (no broker: latest is not measured here), creates
   the rollup job's retention policies and writes, as line protocol straight into them, a year
   of 1-hour rollups for N chargers and 30 days of 1-minute rollups for M of them (the contract
   of docs/design.md#rollups: ``{key}_mean _min _max _last``, ``count``, ``status_last``);
2. measures with ``wrk`` (else the Python generator), ``--clients`` keep-alive connections on
   random chargers:
   - ``history?start=-365d&fields=power_w&limit=10000``: one year at 1-hour resolution (8,760
     points, one page). Goal p99 <= 100 ms;
   - ``history?start=-30d&fields=power_w&limit=10000``: 30 days at 1-minute resolution (43,200
     buckets: 5 pages of 10,000; the first page measured). Goal p99 <= 150 ms;
   each with the page cache as configured (HISTORY_CACHE_S, default 5 s; each page built once
   before the load, its first build reported on its own: the steady state of a dashboard is
   measured, pages expiring and rebuilt during the run) and, with ``--uncached``, once more
   with it off (every request a query of InfluxDB);
3. checks an answer of each (resolution, points) before measuring.

A script, not a test. Every process it starts is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import os
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
from bench.harness.procstat import CpuMeter, wait_quiet
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import BIN, DATABASE, Stack, running_stack, unique_ports, wait_for
from query_api.settings import ApiSettings
from telemetry_common.settings import env_for

READ_KEY: Final = "bench-read-" + "r" * 24
PREFIX: Final = "bench-gw-cp"
WIDTH: Final = 5
LINES_PER_WRITE: Final = 10_000
YEAR_QUERY: Final = "history?start=-365d&fields=power_w&limit=10000"
MONTH_QUERY: Final = "history?start=-30d&fields=power_w&limit=10000"
GOALS_MS: Final = {"1h": 100.0, "1m": 150.0}
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def charger(i: int) -> str:
    return f"{PREFIX}{i:0{WIDTH}d}"


def _lines(
    charger_id: str, rp_measurement: str, start: datetime, width: timedelta, n: int
) -> list[str]:
    """``n`` rollup buckets of ``width`` from ``start`` for one charger (values vary smoothly)."""
    tags = f"{rp_measurement},charger_id={charger_id},gateway_id=bench-gw,evse_id=1,connector_id=1"
    out = []
    step_ns = width // timedelta(microseconds=1) * 1000
    t0 = (start - EPOCH) // timedelta(microseconds=1) * 1000
    for k in range(n):
        p = 3000.0 + (k % 97) * 40.0
        e = 1000.0 * k
        out.append(
            f"{tags} power_w_mean={p},power_w_min={p - 500.0},power_w_max={p + 500.0},"
            f"power_w_last={p + 1.0},energy_wh_mean={e},energy_wh_min={e},"
            f"energy_wh_max={e + 999.0},"
            f'energy_wh_last={e + 999.0},count=60i,status_last="Charging" {t0 + k * step_ns}'
        )
    return out


def load_rollups(influx: Influx, a: argparse.Namespace) -> dict[str, Any]:
    """The retention policies, then the rollups as line protocol."""
    influx.query(f'CREATE DATABASE "{DATABASE}"')
    for rp, duration in (("rollup_1m", "365d"), ("rollup_1h", "1825d")):
        influx.query(
            f'CREATE RETENTION POLICY "{rp}" ON "{DATABASE}" DURATION {duration} REPLICATION 1'
        )
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    minute = timedelta(minutes=1)
    top_h = now - (now - EPOCH) % hour
    top_m = now - (now - EPOCH) % minute
    t0 = time.monotonic()
    points = 0
    plan = [("rollup_1h", "readings_1h", top_h - 366 * 24 * hour, hour, 366 * 24, a.chargers)]
    plan.append(
        (
            "rollup_1m",
            "readings_1m",
            top_m - 31 * 1440 * minute,
            minute,
            31 * 1440,
            a.minute_chargers,
        )
    )
    for rp, measurement, start, width, n, chargers in plan:
        log(f"{rp}: {chargers} chargers x {n:,} buckets ...")
        for i in range(chargers):
            lines = _lines(charger(i), measurement, start, width, n)
            for j in range(0, len(lines), LINES_PER_WRITE):
                r = influx.http.post(
                    "/write",
                    params={"db": DATABASE, "rp": rp, "precision": "ns"},
                    content="\n".join(lines[j : j + LINES_PER_WRITE]).encode(),
                )
                if r.status_code != 204:
                    raise RuntimeError(f"write refused ({r.status_code}): {r.text[:300]}")
            points += len(lines)
    seconds = time.monotonic() - t0
    return {"points": points, "seconds": seconds, "points_per_s": points / seconds}


def start_api(stack: Stack, cache_s: float, a: argparse.Namespace) -> tuple[Any, str]:
    """``telemetry-api`` without a broker, once ``/readyz`` answers 200."""
    (port,) = unique_ports(1)
    env = env_for(
        ApiSettings,
        host="127.0.0.1",
        port=port,
        influx={"url": stack.influx_url, "database": DATABASE, "timeout_s": 30.0},
        log_format="json",
        keys={"read": READ_KEY},
        history_max_points=10_000,
        history_cache_s=cache_s,
    )
    name = f"api-cache-{cache_s:g}s"
    api = stack.start(name, [str(BIN / "telemetry-api")], env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the API to be ready", ready, 60)
    return api, url


def check_answer(url: str, query: str, resolution: str, points: int) -> None:
    r = httpx.get(
        f"{url}/v1/chargers/{charger(0)}/{query}", headers={"X-API-Key": READ_KEY}, timeout=60
    )
    if r.status_code != 200:
        raise RuntimeError(f"{query} answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    got = (body["resolution"], len(body["points"]))
    if got[0] != resolution or not points - 2 <= got[1] <= points + 1:
        raise RuntimeError(f"{query}: {got}, expected ({resolution!r}, ~{points})")


def measure(
    stack: Stack, influx: Influx, name: str, url: str, n: int, query: str, a: argparse.Namespace
) -> dict[str, Any]:
    target = Target(url, PREFIX, n, WIDTH, query, READ_KEY)
    load = Load(a.clients, a.duration, a.request_timeout, a.wrk_threads)
    meter = CpuMeter({p.name: p for p in stack.procs if p.name in ("influxd", name.split(":")[0])})
    queries_before = influx.queries_served()
    meter.start()
    run = run_wrk if a.generator == "wrk" else run_python
    fig = run(stack, name.replace(":", "-"), target, load)
    fig["cpu_percent_of_one_core"] = meter.stop(f"load generator ({a.generator})")
    fig["influx_queries"] = influx.queries_served() - queries_before - 1
    fig["loadavg_after"] = os.getloadavg()
    return fig


def run(a: argparse.Namespace) -> dict[str, Any]:
    if a.generator == "auto":
        a.generator = "wrk" if wrk_binary() else "python"
    if a.generator == "wrk" and wrk_binary() is None:
        raise SystemExit(f"bench: wrk is not installed ({WRK_INSTALL})")
    fig: dict[str, Any] = {"clients": a.clients, "duration_s": a.duration, "generator": a.generator}
    with cli.workdir("bench-history-rollups-", a.keep) as work, running_stack(work) as stack:
        influx = Influx(stack.influx_url)
        try:
            fig["load"] = load_rollups(influx, a)
            log(f"  {fig['load']['points']:,} points in {fig['load']['seconds']:.1f}s")
            fig["influx_quiet_wait_s"] = wait_quiet(stack.proc("influxd").pid, 10.0, a.timeout)
            caches = [a.cache_s, 0.0] if a.uncached else [a.cache_s]
            fig["runs"] = []
            for cache_s in caches:
                api, url = start_api(stack, cache_s, a)
                check_answer(url, YEAR_QUERY, "1h", 365 * 24)
                check_answer(url, MONTH_QUERY, "1m", 10_000)
                for label, query, n in (
                    ("1h", YEAR_QUERY, a.chargers),
                    ("1m", MONTH_QUERY, a.minute_chargers),
                ):
                    log(
                        f"{label}: {query} on {n} chargers, {a.clients} clients, "
                        f"{a.duration:g}s, cache {cache_s:g}s ..."
                    )
                    cold = (
                        warm_up(Target(url, PREFIX, n, WIDTH, query, READ_KEY))
                        if cache_s > 0
                        else None
                    )
                    result = measure(stack, influx, f"{api.name}:{label}", url, n, query, a)
                    result["cold_build_ms"] = cold
                    fig["runs"].append(
                        {"resolution": label, "cache_s": cache_s, "query": query, **result}
                    )
                api.stop(timeout=10)
        finally:
            influx.close()
    return fig


def report(fig: dict[str, Any]) -> None:
    rows: list[Row] = [
        (
            "rollups loaded",
            f"{fig['load']['points']:,} points",
            f"{fig['load']['points_per_s']:,.0f}/s",
        ),
    ]
    for r in fig["runs"]:
        goal = GOALS_MS[r["resolution"]]
        what = "1 year at 1 h" if r["resolution"] == "1h" else "30 days at 1 min (first page)"
        rows.append((
            f"{what}, cache {r['cache_s']:g}s: p99",
            f"{r['p99_ms']:.1f} ms",
            f"goal <= {goal:g} ms: {verdict(r['p99_ms'] <= goal)}; p50 {r['p50_ms']:.1f} ms, "
            f"{r['req_per_s']:,.0f} req/s, {r['errors']} errors, "
            f"{r['influx_queries']} InfluxDB queries",
        ))  # fmt: skip
    for r in fig["runs"]:
        if r.get("cold_build_ms"):
            c = r["cold_build_ms"]
            rows.append((
                f"{r['resolution']}: first build of each page (one client)",
                f"{c['p50_ms']:.1f} ms p50",
                f"max {c['max_ms']:.1f} ms over {c['requests']} pages",
            ))  # fmt: skip
    print_table(rows)


def main() -> None:
    p = cli.parser("bench.history_rollups", __doc__.splitlines()[0] if __doc__ else "")
    p.add_argument(
        "--chargers", type=int, default=20, help="chargers with a year of 1-hour rollups"
    )
    p.add_argument(
        "--minute-chargers", type=int, default=4, help="... with 30 days of 1-minute rollups too"
    )
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--cache-s", type=float, default=5.0, help="HISTORY_CACHE_S of the first run")
    p.add_argument("--uncached", action="store_true", help="measure again with the cache off")
    p.add_argument("--timeout", type=float, default=300.0)
    cli.add_output_options(p)
    a = p.parse_args()
    if a.minute_chargers > a.chargers:
        p.error("--minute-chargers cannot exceed --chargers")
    cli.run_and_report(a, run, report)


if __name__ == "__main__":
    main()
