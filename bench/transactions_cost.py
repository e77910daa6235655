"""Session tracking's cost to the bridge: throughput with readings that carry transaction data
vs. readings without, in the same run (issue 17's goal: at most 10% less).

``.venv/bin/python -m bench.transactions_cost [--readings N] [--session-readings L] [--rounds R]``

Starts its own Mosquitto and InfluxDB 1.x (``bench.harness.stack``) and one
``telemetry-bridge`` (its default settings, plus ``--bridge-env``), then measures R rounds, each
of two phases of ``bench.pipeline_throughput``'s throughput measurement (one publisher process
sending N readings over MQTT as fast as the pipeline takes them; the clock runs until the
bridge counted all N stored; InfluxDB then must hold exactly N):

- ``off``: readings without transaction data;
- ``on``: the same readings, each in a charging session of L readings of its charger
  (``bench.publisher --transactions L``): ``transaction_id`` on every one, ``tx_event``
  ``started`` and an ``id_tag_hash`` on the first, ``ended`` and a ``stop_reason`` on the last,
  as a fleet whose chargers are all charging sends them. The bridge validates them and writes
  them as string fields (docs/design.md#influxdb): that, and InfluxDB storing them, is what
  tracking sessions costs the path a reading takes (the sessions themselves are computed by the
  sessions job, from storage, off that path).

Each round has gateways of its own and alternates the order (off, on; then on, off; ...), as
the machine's speed drifts from minute to minute. Per round: the throughput ratio on/off and
the bridge's CPU per reading in each phase (less disturbed than a rate when the machine gives
the bridge less CPU in one phase); the median round's ratio is the run's figure. Prints a table;
``--json`` writes every figure. A script, not a test: it asserts nothing about the figures.
Every process it starts is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Final

from bench.harness import cli
from bench.harness.influx import Influx
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import DATABASE, running_stack, start_bridge
from bench.pipeline_throughput import measure_pipeline, median_index
from bridge.settings import BridgeSettings

GOAL: Final = 0.10
MODES: Final = ("off", "on")
MAX_ROUNDS: Final = 9


def gateway(k: int, mode: str) -> str:
    return f"bench-tx-{k}-{mode}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("bench.transactions_cost", __doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--readings", type=int, default=500_000, help="N readings per phase")
    p.add_argument("--batch-size", type=int, default=500, help="readings per MQTT message")
    p.add_argument("--chargers", type=int, default=1000, help="distinct chargers")
    p.add_argument(
        "--session-readings", type=int, default=60, help="L readings per charging session"
    )
    p.add_argument("--rounds", type=int, default=5, help=f"off/on rounds (1..{MAX_ROUNDS})")
    p.add_argument("--window", type=int, default=100, help="publisher's unacknowledged publishes")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each phase, seconds")
    p.add_argument("--stall", type=float, default=30.0, help="give up when no progress, seconds")
    cli.add_env_option(p, "--bridge-env", "bridge", BridgeSettings, batch_max_messages=20)
    cli.add_output_options(p)
    a = p.parse_args(argv)
    if min(a.readings, a.batch_size, a.chargers) < 1 or a.batch_size > 5_000:
        p.error("--readings, --batch-size (at most 5,000) and --chargers must be positive")
    if a.session_readings < 2:
        p.error("--session-readings must be at least 2 (a start and an end)")
    if not 1 <= a.rounds <= MAX_ROUNDS:
        p.error(f"--rounds must be within 1..{MAX_ROUNDS}")
    a.bridge_env = cli.parse_env(p, "--bridge-env", a.bridge_env, BridgeSettings)
    a.max_unconfirmed = 0  # the publisher does not wait for stored acknowledgements here
    return a


def _per_reading(pipe: dict[str, Any], name: str) -> float | None:
    cpu = pipe["cpu_seconds"].get(name)
    return None if cpu is None else 1e6 * cpu / max(1, pipe["stored"])


def run(a: argparse.Namespace) -> dict[str, Any]:
    gateways = [gateway(k, m) for k in range(1, a.rounds + 1) for m in MODES]
    rounds: list[dict[str, Any]] = []
    with (
        cli.workdir("bench-transactions-cost-", a.keep) as work,
        running_stack(work, gateways) as stack,
    ):
        influx = Influx(stack.influx_url)
        try:
            influx.query(f'CREATE DATABASE "{DATABASE}"')
            bridge = start_bridge(stack, a.bridge_env)
            for k in range(1, a.rounds + 1):
                order = MODES if k % 2 else tuple(reversed(MODES))
                phases: dict[str, Any] = {}
                for mode in order:
                    cli.log(f"round {k}/{a.rounds}: transactions {mode}, {a.readings:,} ...")
                    extra = ["--transactions", str(a.session_readings)] if mode == "on" else []
                    pipe = measure_pipeline(
                        stack, influx, bridge, a, gateway(k, mode), "off", extra
                    )
                    phases[mode] = {
                        "readings_per_s": pipe["readings_per_s"],
                        "complete": pipe["complete"],
                        "bridge_us_per_reading": _per_reading(pipe, "bridge"),
                        "influxd_us_per_reading": _per_reading(pipe, "influxd"),
                        "pipeline": pipe,
                    }
                on, off = phases["on"]["readings_per_s"], phases["off"]["readings_per_s"]
                cpu_on = phases["on"]["bridge_us_per_reading"]
                cpu_off = phases["off"]["bridge_us_per_reading"]
                rounds.append({
                    "order": list(order),
                    "modes": phases,
                    "ratio": None if on is None or off is None else on / off,
                    "cpu_ratio": None if not cpu_on or not cpu_off else cpu_on / cpu_off,
                })  # fmt: skip
        finally:
            influx.close()
    ratios = [r["ratio"] for r in rounds]
    median = rounds[median_index(ratios)]
    cpu_ratios = [r["cpu_ratio"] for r in rounds if r["cpu_ratio"] is not None]
    influx_ratios = [
        on / off
        for r in rounds
        if (on := r["modes"]["on"]["influxd_us_per_reading"])
        and (off := r["modes"]["off"]["influxd_us_per_reading"])
    ]
    return {
        "args": {k: v for k, v in vars(a).items() if k != "json"},
        "rounds": rounds,
        "ratio": median["ratio"],
        "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
        "influxd_ratio": statistics.median(influx_ratios) if influx_ratios else None,
        "complete": all(p["complete"] for r in rounds for p in r["modes"].values()),
    }


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def print_report(fig: dict[str, Any]) -> None:
    a = fig["args"]
    rows: list[Row] = []
    for k, r in enumerate(fig["rounds"], 1):
        for mode in r["order"]:
            p = r["modes"][mode]
            rows.append((
                f"round {k}, transactions {mode}: readings/s",
                _f(p["readings_per_s"], "{:,.0f}"),
                f"bridge {_f(p['bridge_us_per_reading'])} us/reading, influxd "
                f"{_f(p['influxd_us_per_reading'])} us/reading"
                + ("" if p["complete"] else "; INCOMPLETE"),
            ))  # fmt: skip
        rows.append((
            f"round {k}: on / off",
            _f(r["ratio"], "{:.1%}"),
            f"bridge CPU per reading on / off {_f(r['cpu_ratio'], '{:.1%}')}",
        ))  # fmt: skip
    ratio = fig["ratio"]
    rows.append((
        "throughput with / without transactions (median round)",
        _f(ratio, "{:.1%}"),
        f"goal >= {1 - GOAL:.0%} (costs <= {GOAL:.0%}): "
        f"{verdict(ratio is not None and ratio >= 1 - GOAL)}; {a['readings']:,} readings of "
        f"{a['chargers']} chargers per phase, sessions of {a['session_readings']} readings",
    ))  # fmt: skip
    rows.append(
        (
            "bridge CPU per reading, with / without (median)",
            _f(fig["cpu_ratio"], "{:.1%}"),
            "the cost, less disturbed by the machine's drift than a rate",
        )
    )
    rows.append((
        "InfluxDB CPU per reading, with / without (median)",
        _f(fig["influxd_ratio"], "{:.1%}"),
        "storing the string fields: InfluxDB bounds the pipeline's rate here",
    ))  # fmt: skip
    print_table(rows)


def main(argv: list[str] | None = None) -> None:
    cli.run_and_report(parse_args(argv), run, print_report)


if __name__ == "__main__":
    main()
