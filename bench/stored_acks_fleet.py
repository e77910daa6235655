"""Stored acknowledgements for a fleet: their traffic and what they cost the bridge.

``.venv/bin/python -m bench.stored_acks_fleet [--gateways 2000] [--processes 4] [--rounds 2]``

Starts its own Mosquitto (TLS, project configuration and ACL) and InfluxDB 1.x on free loopback
ports in a temporary directory with a dev PKI holding a certificate per gateway (CN = gateway id,
as ``telemetry-stack pki gateway`` issues them), then:

1. starts the real ``telemetry-bridge``, then ``--processes`` fleet publishers
   (``bench.fleet_publisher``) holding ``--gateways`` MQTT connections between them, one per
   gateway, each with its own certificate and a persistent session subscribed (QoS 1) to its own
   ``{root}/{gateway}/stored``; every gateway publishes a ReadingBatch of ``--chargers`` readings
   every ``--interval`` seconds (QoS 1), the gateways spread evenly over the interval;
2. measures ``--rounds`` rounds of two phases each, the bridge's ``STORED_ACKS`` off in one and
   on in the other (order alternating: off, on, on, off, ...), ``--phase-seconds`` each after
   ``--settle`` seconds. Between phases of different settings the bridge is restarted with the
   same MQTT session (the broker holds what arrives meanwhile); the gateways keep publishing
   throughout, so both settings see the same load in the same run;
3. per phase: the bridge's CPU seconds per second (and Mosquitto's, InfluxDB's, the
   publishers'), the messages and readings it stored per second and the acknowledgements it
   published per second (its own metrics), and from the gateways: acknowledgements received
   per gateway per second, the mean readings one acknowledgement covers, and the delay from a
   message's publish to the acknowledgement covering it (p50/p99, messages published in the
   phase);
4. per setting, the median over the rounds; the cost of acknowledging: bridge CPU with them on
   minus off, per second and per acknowledgement.

Prints a table and optionally writes every figure as JSON (``--json``). A script, not a test.
Every process it starts is stopped by PID on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any, Final

from bench.harness import cli
from bench.harness.procstat import cpu_seconds, machine_busy
from bench.harness.report import Row, percentile, print_table, verdict
from bench.harness.stack import (
    TOPIC_ROOT,
    ManagedProcess,
    Stack,
    running_stack,
    start_bridge,
    wait_exit,
)
from bridge.settings import BridgeSettings
from telemetry_common.settings import env_for

PREFIX: Final = "fleet-gw-"
MODES: Final = ("off", "on")
MAX_GATEWAYS: Final = 10_000


def gateway_name(index: int) -> str:
    return f"{PREFIX}{index:05d}"


def bridge_env(a: argparse.Namespace, mode: str) -> dict[str, str]:
    return {**env_for(BridgeSettings, stored_acks=mode == "on"), **a.bridge_env}


def profile_path(a: argparse.Namespace, mode: str, k: int) -> Path | None:
    """With ``--profile-bridge FILE``: where the bridge of phase ``k`` writes its stats."""
    prof: Path | None = a.profile_bridge
    return None if prof is None else prof.with_name(f"{prof.name}.{mode}-{k}")


def start_publishers(stack: Stack, a: argparse.Namespace) -> list[ManagedProcess]:
    procs = []
    per = -(-a.gateways // a.processes)
    for k in range(a.processes):
        first = k * per
        count = min(per, a.gateways - first)
        if count <= 0:
            break
        argv = [
            sys.executable,
            "-m",
            "bench.fleet_publisher",
            "--port",
            str(stack.tls_port),
            "--pki-dir",
            str(stack.pki.dir),
            "--prefix",
            PREFIX,
            "--first",
            str(first),
            "--count",
            str(count),
            "--chargers",
            str(a.chargers),
            "--interval",
            str(a.interval),
            "--topic-root",
            TOPIC_ROOT,
            "--ready-file",
            str(stack.work / f"fleet-{k}.ready"),
            "--stop-file",
            str(stack.work / "fleet.stop"),
            "--max-seconds",
            str(a.timeout),
            "--out",
            str(stack.work / f"fleet-{k}.json"),
        ]
        procs.append(stack.start(f"fleet-{k}", argv))
    return procs


def wait_ready(stack: Stack, procs: list[ManagedProcess], timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        ready = sum((stack.work / f"{p.name}.ready").exists() for p in procs)
        if ready == len(procs):
            return time.monotonic() - t0
        for p in procs:
            if not p.is_running():
                raise RuntimeError(f"{p.name} exited ({p.returncode()}):\n{p.log_tail()}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {ready} of {len(procs)} publishers connected in time")
        time.sleep(0.5)


def snapshot(stack: Stack, bridge: ManagedProcess, pubs: list[ManagedProcess]) -> dict[str, Any]:
    pub_cpu = [cpu_seconds(p.pid) for p in pubs]
    return {
        "t": time.time(),
        "mono": time.monotonic(),
        "cpu": {
            "bridge": cpu_seconds(bridge.pid),
            "mosquitto": cpu_seconds(stack.proc("mosquitto").pid),
            "influxd": cpu_seconds(stack.proc("influxd").pid),
            "publishers": None if None in pub_cpu else sum(x or 0.0 for x in pub_cpu),
        },
        "machine": machine_busy(),
        "metrics": stack.bridge_metrics(),
    }


def _delta(m0: dict[str, float], m1: dict[str, float], key: str) -> float:
    k = f"telemetry_bridge_{key}"
    return m1.get(k, 0.0) - m0.get(k, 0.0)


def phase_figures(s0: dict[str, Any], s1: dict[str, Any]) -> dict[str, Any]:
    """What the servers and the bridge did between two snapshots."""
    span = s1["mono"] - s0["mono"]
    cpu = {
        name: None
        if (b := s0["cpu"][name]) is None or (e := s1["cpu"][name]) is None
        else (e - b) / span
        for name in s0["cpu"]
    }
    d_busy = s1["machine"][0] - s0["machine"][0]
    d_total = s1["machine"][1] - s0["machine"][1]
    m0, m1 = s0["metrics"], s1["metrics"]
    return {
        "t0": s0["t"],
        "t1": s1["t"],
        "seconds": span,
        "cpu_s_per_s": cpu,
        "machine_cores_busy": (os.cpu_count() or 1) * d_busy / d_total if d_total else None,
        "bridge_messages_per_s": _delta(m0, m1, "messages_total") / span,
        "bridge_stored_per_s": _delta(m0, m1, "readings_stored_total") / span,
        "bridge_acks_published_per_s": _delta(m0, m1, "stored_acks_published_total") / span,
        # Bridge CPU per message stored: the figure that stays comparable when the machine
        # (shared) gives the bridge less CPU in one phase than in another and it falls behind.
        "bridge_cpu_us_per_message": (
            None
            if cpu["bridge"] is None or not _delta(m0, m1, "messages_total")
            else 1e6 * cpu["bridge"] * span / _delta(m0, m1, "messages_total")
        ),
    }


def gateway_figures(
    recs: list[dict[str, Any]], t0: float, t1: float, gateways: int
) -> dict[str, Any]:
    """What the gateways saw between wall times t0 and t1: acknowledgements received (per
    gateway per second, readings each) and publish-to-acknowledgement of messages published."""
    span = t1 - t0
    acks = 0
    seqs = 0
    published = 0
    delays: list[float] = []
    unacked = 0
    for r in recs:
        ack_t = r["ack_t"]
        i, j = bisect_left(ack_t, t0), bisect_left(ack_t, t1)
        acks += j - i
        seqs += sum(r["ack_seqs"][i:j])
        pub_t = r["pub_t"]
        n_pub = bisect_left(pub_t, t1) - bisect_left(pub_t, t0)
        published += n_pub
        timed = 0
        for tp, ta in zip(r["msg_pub_t"], r["msg_ack_t"], strict=True):
            if t0 <= tp < t1:
                delays.append((ta - tp) * 1000.0)
                timed += 1
        unacked += n_pub - timed
    delays.sort()
    return {
        "published_per_s": published / span,
        "acks_received_per_s": acks / span,
        "acks_per_gateway_per_s": acks / span / gateways,
        "readings_per_ack": seqs / acks if acks else 0.0,
        "messages_timed": len(delays),
        "messages_not_acknowledged": unacked,
        "ack_p50_ms": percentile(delays, 50),
        "ack_p99_ms": percentile(delays, 99),
        "ack_max_ms": delays[-1] if delays else float("nan"),
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    names = [gateway_name(i) for i in range(a.gateways)]
    order = [m for k in range(a.rounds) for m in (MODES if k % 2 == 0 else MODES[::-1])]
    load0 = os.getloadavg()
    with cli.workdir("bench-fleet-", a.keep) as work:
        t_pki = time.monotonic()
        with running_stack(work, names) as stack:
            pki_s = time.monotonic() - t_pki
            cli.log(f"{a.gateways:,} gateway certificates and the servers in {pki_s:.0f}s")
            mode = order[0]
            bridge = start_bridge(stack, bridge_env(a, mode), profile_path(a, mode, 1))
            pubs = start_publishers(stack, a)
            connect_s = wait_ready(stack, pubs, a.timeout)
            cli.log(f"{a.gateways:,} gateways connected and subscribed in {connect_s:.0f}s")
            phases: list[dict[str, Any]] = []
            try:
                for k, want in enumerate(order, start=1):
                    if want != mode:
                        bridge.stop(timeout=20)
                        mode = want
                        bridge = start_bridge(stack, bridge_env(a, mode), profile_path(a, mode, k))
                    cli.log(
                        f"phase {k}/{len(order)}: stored acks {mode}, "
                        f"{a.settle:.0f}s settling, {a.phase_seconds:.0f}s measured ..."
                    )
                    time.sleep(a.settle)
                    s0 = snapshot(stack, bridge, pubs)
                    time.sleep(a.phase_seconds)
                    s1 = snapshot(stack, bridge, pubs)
                    for p in [bridge, *pubs]:
                        if not p.is_running():
                            raise RuntimeError(f"{p.name} exited:\n{p.log_tail()}")
                    phases.append({"acks": mode, **phase_figures(s0, s1)})
                # The acknowledgements of the last phase's last messages are still on their way.
                time.sleep(a.tail)
            finally:
                (work / "fleet.stop").write_text("stop", encoding="utf-8")
            recs = []
            for p in pubs:
                wait_exit(p, 60)
                recs.append(json.loads((work / f"{p.name}.json").read_text()))
            bridge.stop(timeout=20)
    for ph in phases:
        ph.update(gateway_figures(recs, ph["t0"], ph["t1"], a.gateways))
    per_mode: dict[str, Any] = {}
    for m in MODES:
        mine = [ph for ph in phases if ph["acks"] == m]

        def med(get: Any, phases: list[dict[str, Any]] = mine) -> float | None:
            xs = [x for ph in phases if (x := get(ph)) is not None]
            return statistics.median(xs) if xs else None

        per_mode[m] = {
            "phases": len(mine),
            "bridge_cpu_s_per_s": med(lambda ph: ph["cpu_s_per_s"]["bridge"]),
            "bridge_cpu_us_per_message": med(lambda ph: ph["bridge_cpu_us_per_message"]),
            "mosquitto_cpu_s_per_s": med(lambda ph: ph["cpu_s_per_s"]["mosquitto"]),
            "influxd_cpu_s_per_s": med(lambda ph: ph["cpu_s_per_s"]["influxd"]),
            "publishers_cpu_s_per_s": med(lambda ph: ph["cpu_s_per_s"]["publishers"]),
            "machine_cores_busy": med(lambda ph: ph["machine_cores_busy"]),
            "bridge_messages_per_s": med(lambda ph: ph["bridge_messages_per_s"]),
            "bridge_stored_per_s": med(lambda ph: ph["bridge_stored_per_s"]),
            "bridge_acks_published_per_s": med(lambda ph: ph["bridge_acks_published_per_s"]),
            "published_per_s": med(lambda ph: ph["published_per_s"]),
            "acks_received_per_s": med(lambda ph: ph["acks_received_per_s"]),
            "acks_per_gateway_per_s": med(lambda ph: ph["acks_per_gateway_per_s"]),
            "readings_per_ack": med(lambda ph: ph["readings_per_ack"]),
            "ack_p50_ms": med(lambda ph: ph["ack_p50_ms"]),
            "ack_p99_ms": med(lambda ph: ph["ack_p99_ms"]),
        }
    on, off = per_mode["on"], per_mode["off"]
    cost = None
    per_ack_us = None
    if on["bridge_cpu_s_per_s"] is not None and off["bridge_cpu_s_per_s"] is not None:
        cost = on["bridge_cpu_s_per_s"] - off["bridge_cpu_s_per_s"]
        if on["bridge_acks_published_per_s"]:
            per_ack_us = 1e6 * cost / on["bridge_acks_published_per_s"]
    # Normalized per message stored (robust when the bridge fell behind in a phase): the CPU
    # the 'on' phases spent beyond what their messages cost with acknowledgements off.
    per_ack_norm_us = None
    if (
        on["bridge_cpu_us_per_message"] is not None
        and off["bridge_cpu_us_per_message"] is not None
        and on["bridge_acks_published_per_s"]
    ):
        extra = on["bridge_cpu_us_per_message"] - off["bridge_cpu_us_per_message"]
        per_ack_norm_us = extra * on["bridge_messages_per_s"] / on["bridge_acks_published_per_s"]
    # Per round (an off and an on phase next to each other): the same difference.
    round_costs = []
    for k in range(a.rounds):
        pair = {ph["acks"]: ph for ph in phases[2 * k : 2 * k + 2]}
        b_on, b_off = pair["on"]["cpu_s_per_s"]["bridge"], pair["off"]["cpu_s_per_s"]["bridge"]
        round_costs.append(None if b_on is None or b_off is None else b_on - b_off)
    return {
        "gateways": a.gateways,
        "processes": a.processes,
        "readings_per_message": a.chargers,
        "interval_s": a.interval,
        "phase_seconds": a.phase_seconds,
        "settle_seconds": a.settle,
        "tail_seconds": a.tail,
        "rounds": a.rounds,
        "bridge_env": a.bridge_env,
        "certificates_seconds": pki_s,
        "connect_seconds": connect_s,
        "publisher_disconnects": sum(r["disconnects"] for r in recs),
        "publish_refused": sum(r["pub_refused"] for r in recs),
        "phases": phases,
        "modes": per_mode,
        "bridge_cpu_cost_s_per_s": cost,
        "bridge_cpu_cost_per_round": round_costs,
        "bridge_cpu_us_per_ack": per_ack_us,
        "bridge_cpu_us_per_ack_per_message_basis": per_ack_norm_us,
        "load_average": [load0, os.getloadavg()],
    }


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def print_report(fig: dict[str, Any]) -> None:
    on, off = fig["modes"]["on"], fig["modes"]["off"]
    n = fig["rounds"]
    g = fig["gateways"]
    # Kept up: stored at least 95% of what the gateways published, in every phase.
    kept_up = all(
        ph["bridge_messages_per_s"] >= 0.95 * ph["published_per_s"] for ph in fig["phases"]
    )
    rows: list[Row] = [
        (
            "fleet",
            f"{g:,} gateways",
            f"{fig['processes']} publisher processes; {fig['readings_per_message']} readings "
            f"per message every {fig['interval_s']:g} s each; connected in "
            f"{fig['connect_seconds']:.0f} s; {fig['publisher_disconnects']} disconnects, "
            f"{fig['publish_refused']} publishes refused",
        ),
        (
            "messages stored by the bridge, acks off / on",
            f"{_f(off['bridge_messages_per_s'], ',.0f')} / "
            f"{_f(on['bridge_messages_per_s'], ',.0f')} msg/s",
            f"{_f(off['bridge_stored_per_s'], ',.0f')} / {_f(on['bridge_stored_per_s'], ',.0f')} "
            f"readings/s; published {_f(on['published_per_s'], ',.0f')} msg/s; bridge kept up "
            f"in every phase: {verdict(kept_up)}",
        ),
        (
            "acknowledgements published by the bridge",
            f"{_f(on['bridge_acks_published_per_s'], ',.0f')} /s",
            f"median of {n} phases with acks on (off: "
            f"{_f(off['bridge_acks_published_per_s'], ',.0f')} /s)",
        ),
        (
            "acknowledgements received per gateway",
            f"{_f(on['acks_per_gateway_per_s'], '.2f')} /s",
            f"{_f(on['acks_received_per_s'], ',.0f')} /s at the gateways in all",
        ),
        (
            "readings covered per acknowledgement (mean)",
            _f(on["readings_per_ack"], ".1f"),
            "seqs named by its ranges",
        ),
        (
            "publish-to-acknowledgement p50 / p99",
            f"{_f(on['ack_p50_ms'], ',.0f')} / {_f(on['ack_p99_ms'], ',.0f')} ms",
            "messages published in the phases with acks on; includes the wait for the "
            "bridge's next flush (ACK_INTERVAL_S)",
        ),
        (
            "bridge CPU, acks off / on",
            f"{_f(off['bridge_cpu_s_per_s'], '.3f')} / {_f(on['bridge_cpu_s_per_s'], '.3f')} s/s",
            f"median of {n} phases each; the same load, the same run",
        ),
        (
            "bridge CPU per message stored, acks off / on",
            f"{_f(off['bridge_cpu_us_per_message'], ',.0f')} / "
            f"{_f(on['bridge_cpu_us_per_message'], ',.0f')} us",
            "comparable even when the bridge fell behind in a phase: "
            f"{_f(fig['bridge_cpu_us_per_ack_per_message_basis'], ',.0f')} us per "
            "acknowledgement on this basis",
        ),
        (
            "bridge CPU for acknowledging (on - off)",
            f"{_f(fig['bridge_cpu_cost_s_per_s'], '.3f')} s/s",
            f"{_f(fig['bridge_cpu_us_per_ack'], ',.0f')} us per acknowledgement; per round: "
            + ", ".join(_f(x, ".3f") for x in fig["bridge_cpu_cost_per_round"]),
        ),
        (
            "CPU of mosquitto / influxd / publishers, acks off",
            f"{_f(off['mosquitto_cpu_s_per_s'], '.2f')} / {_f(off['influxd_cpu_s_per_s'], '.2f')}"
            f" / {_f(off['publishers_cpu_s_per_s'], '.2f')} s/s",
            f"machine: {_f(off['machine_cores_busy'], '.2f')} cores busy (every process on it)",
        ),
        (
            "CPU of mosquitto / influxd / publishers, acks on",
            f"{_f(on['mosquitto_cpu_s_per_s'], '.2f')} / {_f(on['influxd_cpu_s_per_s'], '.2f')}"
            f" / {_f(on['publishers_cpu_s_per_s'], '.2f')} s/s",
            f"machine: {_f(on['machine_cores_busy'], '.2f')} cores busy (every process on it)",
        ),
    ]
    for k, ph in enumerate(fig["phases"], start=1):
        cpu = ph["cpu_s_per_s"]
        rows.append(
            (
                f"  phase {k}: acks {ph['acks']}",
                f"bridge {_f(cpu['bridge'], '.3f')} s/s, "
                f"{_f(ph['bridge_cpu_us_per_message'], ',.0f')} us/msg",
                f"{ph['bridge_messages_per_s']:,.0f} msg/s stored, "
                f"{ph['bridge_acks_published_per_s']:,.0f} acks/s published, "
                f"{ph['acks_per_gateway_per_s']:.2f} per gateway received, "
                + (
                    f"p50/p99 {_f(ph['ack_p50_ms'], ',.0f')}/{_f(ph['ack_p99_ms'], ',.0f')} ms, "
                    f"{ph['messages_not_acknowledged']:,} not acknowledged; "
                    if ph["acks"] == "on"
                    else ""
                )
                + f"machine {_f(ph['machine_cores_busy'], '.2f')} cores busy",
            )
        )
    unacked = sum(ph["messages_not_acknowledged"] for ph in fig["phases"] if ph["acks"] == "on")
    rows.append(
        (
            "messages of the 'on' phases never acknowledged",
            f"{unacked:,}",
            verdict(unacked == 0),
        )
    )
    (l0, l1) = fig["load_average"]
    rows.append(
        (
            "load average at start / end",
            "",
            " -> ".join(" / ".join(f"{x:.2f}" for x in la) for la in (l0, l1)),
        )
    )
    print_table(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "bench.stored_acks_fleet",
        "Stored acknowledgements for a fleet of gateways (one TLS connection each): their "
        "traffic and the bridge CPU they cost, acks off vs on in the same run. Starts and stops "
        "its own servers on loopback.",
    )
    p.add_argument("--gateways", type=int, default=2_000, help="simulated gateways")
    p.add_argument("--processes", type=int, default=4, help="publisher processes holding them")
    p.add_argument("--chargers", type=int, default=4, help="readings per message")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between a gateway's msgs")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (off, on) phases, 1..5")
    p.add_argument("--phase-seconds", type=float, default=30.0, help="measured seconds per phase")
    p.add_argument("--settle", type=float, default=8.0, help="seconds before each measurement")
    p.add_argument(
        "--tail", type=float, default=5.0, help="seconds the gateways listen after the last phase"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run")
    cli.add_env_option(p, "--bridge-env", "bridge", BridgeSettings, ack_interval_s=0.5)
    p.add_argument(
        "--profile-bridge",
        type=Path,
        help="run each bridge under cProfile, stats in FILE.MODE-K (K: the phase it starts in)",
    )
    cli.add_output_options(p)
    a = p.parse_args(argv)
    if not 1 <= a.gateways <= MAX_GATEWAYS:
        p.error(f"--gateways must be within 1..{MAX_GATEWAYS:,}")
    if not 1 <= a.processes <= 16 or a.processes > a.gateways:
        p.error("--processes must be within 1..16 and at most --gateways")
    if not 1 <= a.rounds <= 5:
        p.error("--rounds must be within 1..5")
    if a.chargers < 1 or a.interval <= 0 or a.phase_seconds <= 0 or a.settle < 0:
        p.error("--chargers, --interval and --phase-seconds must be positive")
    a.bridge_env = cli.parse_env(p, "--bridge-env", a.bridge_env, BridgeSettings)
    (acks_var,) = env_for(BridgeSettings, stored_acks=True)
    if acks_var in a.bridge_env:
        p.error(f"{acks_var} is set by the phases")
    return a


def main(argv: list[str] | None = None) -> None:
    cli.run_and_report(parse_args(argv), run, print_report)


if __name__ == "__main__":
    main()
