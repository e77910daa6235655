"""Rollup job cost benchmark: CPU of ``telemetry-rollups`` per reading rolled up vs. the bridge's
CPU per reading stored (issue 18's goal: at most 10%).

``.venv/bin/python -m bench.rollups_cost [--readings N] [--chargers C] [--every S] [--hours H]
[--write-path auto|into|lines] [--late-check-every 10m] [--pass-minutes K]``

Starts its own Mosquitto and InfluxDB 1.x (``bench.harness.stack``) and measures, in one run:

1. the bridge: ``bench.pipeline_throughput``'s throughput phase (one ``telemetry-bridge``, one
   publisher process sending N readings over MQTT, acknowledgements off): bridge CPU seconds per
   reading stored;
2. the rollup job, first pass (a backfill): H hours of readings of C chargers, one every S
   seconds each (the fleet's density matters: the job's work is one row per bucket and series,
   the bridge's one per reading), written straight to InfluxDB; then ``telemetry-rollups --once``
   in its own process with no saved progress rolls all of them up: its CPU seconds (user +
   system, from the reaped child) per reading;
3. the rollup job, steady state: the same job in this process, one pass per simulated minute
   (a clock advanced by a minute each pass, or by K minutes: ``INTERVAL_S`` K x 60; ``LOOKBACK``
   2 h: the first pass and then one every ``--late-check-every`` also count the readings of the
   last two hours, raw and rolled up, for late ones) over the last ``--steady-minutes`` of the
   data: this process's CPU per reading of those minutes.

Both phases use ``--write-path`` (``WRITE_PATH``: ``auto`` is ``into`` on this InfluxDB 1.x,
``lines`` is the path of 2.x/3.x).

InfluxDB's own CPU during 2 and 3 is shown beside (it does the aggregation; the bridge's figure
leaves out InfluxDB's write cost likewise). Prints a table; ``--json`` writes the figures. A
script, not a test; every process it starts is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bench.harness import cli
from bench.harness.influx import Influx
from bench.harness.procstat import children_cpu, cpu_seconds
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import BIN, DATABASE, Stack, running_stack, start_bridge, wait_exit
from bench.pipeline_throughput import measure_pipeline
from rollups.job import RollupJob
from rollups.retention import ensure_rollup_policies
from rollups.settings import RollupsInfluxSettings, RollupsSettings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer
from telemetry_common.settings import env_for

GATEWAY: Final = "bench-gw"
GOAL: Final = 0.10
WRITE_BATCH: Final = 5_000
MINUTE: Final = timedelta(minutes=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("bench.rollups_cost", __doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--readings", type=int, default=100_000, help="N readings through the bridge")
    p.add_argument("--batch-size", type=int, default=500, help="readings per MQTT message")
    p.add_argument("--chargers", type=int, default=200, help="C chargers of the rollup data")
    p.add_argument("--every", type=float, default=10.0, help="S seconds between readings")
    p.add_argument("--hours", type=float, default=6.0, help="H hours of rollup data")
    p.add_argument("--steady-minutes", type=int, default=30, help="passes of the steady state")
    p.add_argument("--write-path", choices=("auto", "into", "lines"), default="auto")
    p.add_argument("--late-check-every", default="10m", help="LATE_CHECK_EVERY of the job")
    p.add_argument("--pass-minutes", type=int, default=1, help="K: a pass every K minutes")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each phase, seconds")
    p.add_argument("--stall", type=float, default=30.0, help="give up when no progress, seconds")
    cli.add_output_options(p)
    a = p.parse_args(argv)
    a.window, a.max_unconfirmed = 100, 20_000  # the publisher's defaults (pipeline_throughput)
    return a


def write_fleet(influx: Influx, a: argparse.Namespace, end: datetime) -> int:
    """H hours of readings of C chargers, one every S seconds each (all of the bench's value
    keys, staggered per charger), straight to InfluxDB; returns how many."""
    start = end - timedelta(hours=a.hours)
    step_ns = int(a.every * 1e9)
    start_ns = int(start.timestamp()) * 10**9
    end_ns = int(end.timestamp()) * 10**9
    batch: list[str] = []
    n = 0
    for c in range(a.chargers):
        head = f"readings,charger_id=cp-{c:05d},connector_id=1,evse_id=1,gateway_id={GATEWAY} "
        ns = start_ns + (c * 997_000_000) % step_ns
        seq = 0
        while ns < end_ns:
            seq += 1
            batch.append(
                f"{head}energy_wh={seq * 12.5},power_w={7000 + seq % 400}.5,current_a=31.8,"
                f"voltage_v=229.5,soc_pct={seq % 100}.0,temperature_c=41.5,frequency_hz=50.0,"
                f'current_l1_a=31.8,status="Charging",seq={seq}i {ns}'
            )
            ns += step_ns
            if len(batch) >= WRITE_BATCH:
                influx.write(DATABASE, "\n".join(batch).encode())
                n += len(batch)
                batch.clear()
    if batch:
        influx.write(DATABASE, "\n".join(batch).encode())
        n += len(batch)
    return n


def measure_bridge(stack: Stack, influx: Influx, a: argparse.Namespace) -> dict[str, Any]:
    bridge = start_bridge(stack, {})
    try:
        pipe = measure_pipeline(stack, influx, bridge, a, GATEWAY)
    finally:
        bridge.stop()
    cpu = pipe["cpu_seconds"]["bridge"]
    return {
        "readings": pipe["stored"],
        "complete": pipe["complete"],
        "readings_per_s": pipe["readings_per_s"],
        "bridge_cpu_s": cpu,
        "influxd_cpu_s": pipe["cpu_seconds"]["influxd"],
        "bridge_us_per_reading": None if cpu is None else 1e6 * cpu / max(1, pipe["stored"]),
    }


def measure_first_pass(stack: Stack, a: argparse.Namespace, readings: int) -> dict[str, Any]:
    """``telemetry-rollups --once`` with no saved progress: rolls up everything."""
    env = env_for(
        RollupsSettings,
        influx={"url": stack.influx_url, "database": DATABASE},
        http_port=0,
        log_format="json",
        write_path=a.write_path,
        late_check_every=a.late_check_every,
    )
    influxd = stack.proc("influxd")
    before, influx_before, t0 = children_cpu(), cpu_seconds(influxd.pid), time.monotonic()
    job = stack.start("rollups", [str(BIN / "telemetry-rollups"), "--once"], env)
    wait_exit(job, a.timeout)
    wall = time.monotonic() - t0
    cpu = children_cpu() - before
    influx_cpu = _delta(influx_before, cpu_seconds(influxd.pid))
    return {
        "readings": readings,
        "wall_s": wall,
        "job_cpu_s": cpu,
        "influxd_cpu_s": influx_cpu,
        "job_us_per_reading": 1e6 * cpu / readings,
    }


async def _steady(a: argparse.Namespace, stack: Stack, end: datetime) -> tuple[float, int, int]:
    """One pass per simulated minute over the last ``--steady-minutes`` (progress rewound to
    their start); returns (CPU seconds of this process, readings of those minutes, points)."""
    settings = RollupsSettings(
        influx=RollupsInfluxSettings(url=stack.influx_url, database=DATABASE),
        http_port=0,
        settle_s=0,
        write_path=a.write_path,
        late_check_every=a.late_check_every,
    )
    clock = [end - a.steady_minutes * MINUTE]
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await ensure_rollup_policies(client, settings)
        job = RollupJob(settings, client, writer, now=lambda: clock[0])
        await job.save_progress(clock[0])
        cpu0, points = time.process_time(), 0
        for _ in range(a.steady_minutes // a.pass_minutes):
            clock[0] += a.pass_minutes * MINUTE
            result = await job.run_pass()
            points += result.written["1m"] + result.written["1h"]
        cpu = time.process_time() - cpu0
    per_minute = a.chargers * 60 / a.every
    minutes = a.steady_minutes // a.pass_minutes * a.pass_minutes
    return cpu, round(per_minute * minutes), points


def measure_steady(stack: Stack, a: argparse.Namespace, end: datetime) -> dict[str, Any]:
    influxd = stack.proc("influxd")
    influx_before = cpu_seconds(influxd.pid)
    cpu, readings, points = asyncio.run(_steady(a, stack, end))
    return {
        "passes": a.steady_minutes // a.pass_minutes,
        "readings": readings,
        "points_written": points,
        "job_cpu_s": cpu,
        "influxd_cpu_s": _delta(influx_before, cpu_seconds(influxd.pid)),
        "job_us_per_reading": 1e6 * cpu / max(1, readings),
    }


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def run(a: argparse.Namespace) -> dict[str, Any]:
    with cli.workdir("bench-rollups-", a.keep) as work, running_stack(work, [GATEWAY]) as stack:
        influx = Influx(stack.influx_url)
        try:
            influx.query(f'CREATE DATABASE "{DATABASE}"')
            cli.log(f"bridge: {a.readings:,} readings over MQTT")
            bridge = measure_bridge(stack, influx, a)
            # The rollup data in a database of its own content: drop the bridge's readings.
            influx.query(f'DROP DATABASE "{DATABASE}"')
            influx.query(f'CREATE DATABASE "{DATABASE}"')
            end = datetime.now(UTC).replace(second=0, microsecond=0) - 5 * MINUTE
            readings = write_fleet(influx, a, end)
            cli.log(f"rollups: {readings:,} readings of {a.chargers} chargers written")
            first = measure_first_pass(stack, a, readings)
            steady = measure_steady(stack, a, end)
        finally:
            influx.close()
    fig: dict[str, Any] = {
        "args": {k: v for k, v in vars(a).items() if k not in {"json"}},
        "bridge": bridge,
        "first_pass": first,
        "steady": steady,
    }
    per = bridge["bridge_us_per_reading"]
    for phase in ("first_pass", "steady"):
        fig[phase]["ratio"] = None if not per else fig[phase]["job_us_per_reading"] / per
    return fig


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def print_report(fig: dict[str, Any]) -> None:
    b, f, s, a = fig["bridge"], fig["first_pass"], fig["steady"], fig["args"]
    rows: list[Row] = [
        ("bridge: readings stored", f"{b['readings']:,}", "complete" if b["complete"] else "LOSS"),
        ("bridge: CPU per reading (us)", _f(b["bridge_us_per_reading"]), ""),
        (
            "rollup data",
            f"{f['readings']:,}",
            f"{a['chargers']} chargers, one reading every {a['every']}s, {a['hours']}h; "
            f"write path {a['write_path']}, late check every {a['late_check_every']}",
        ),
        ("first pass: wall (s)", _f(f["wall_s"]), "telemetry-rollups --once, no progress"),
        ("first pass: job CPU per reading (us)", _f(f["job_us_per_reading"]), ""),
        ("first pass: influxd CPU (s)", _f(f["influxd_cpu_s"]), "aggregation, beside"),
        (
            "first pass: job / bridge",
            _f(f["ratio"], "{:.1%}"),
            f"goal <= {GOAL:.0%}: {verdict(f['ratio'] is not None and f['ratio'] <= GOAL)}",
        ),
        (
            "steady: passes",
            str(s["passes"]),
            f"one per {a['pass_minutes']} minute(s), {s['points_written']:,} points written",
        ),
        ("steady: job CPU per reading (us)", _f(s["job_us_per_reading"]), ""),
        ("steady: influxd CPU (s)", _f(s["influxd_cpu_s"]), "aggregation + late checks"),
        (
            "steady: job / bridge",
            _f(s["ratio"], "{:.1%}"),
            f"goal <= {GOAL:.0%}: {verdict(s['ratio'] is not None and s['ratio'] <= GOAL)}",
        ),
    ]
    print_table(rows)


def main(argv: list[str] | None = None) -> None:
    cli.run_and_report(parse_args(argv), run, print_report)


if __name__ == "__main__":
    main()
