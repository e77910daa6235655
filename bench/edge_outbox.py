"""Edge outbox benchmark: durable append rate, publish/drain rate over TLS, drain RSS.

``.venv/bin/python -m bench.edge_outbox [--chargers 100] [--seconds 3600] [--keep]``

In a temporary directory, with a dev PKI and its own Mosquitto (TLS, project configuration) on
free loopback ports:

1. **append**: simulates ``--chargers`` chargers at 1 Hz for ``--seconds`` (default 100 x 3600 =
   360,000 readings) and appends them to a fresh outbox in transactions of ``--tx`` readings
   (default 1,000; each commit fsynced, ``synchronous=FULL``). Only ``Outbox.append`` is timed
   (bodies are built per tick, outside the clock); the agent's unique-ts rule
   (``UniqueTs.apply``, run on the captures before their bodies are built) is timed on its own.
   Also times one-tick transactions (100 readings, what the live agent does at 1 Hz) on a second
   outbox.
2. **drain**: runs ``edge-agent outbox drain --json`` (the real console script, its own
   process) on that backlog: MQTT 5 over TLS with the gateway's certificate, QoS 1, each batch
   deleted after its PUBACK. A persistent QoS 1 subscriber (the bridge's identity) checks every
   reading arrives. Reports drain wall time (process start to exit, so it includes start-up and
   the integrity check of the outbox), the drain's own publish rate, and the drain process's
   peak RSS (VmHWM).
3. **flatness**: the same drain on a backlog 10x smaller; peak RSS should not differ much.

A script, not a test; every process it starts is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
import paho.mqtt.client as paho

from bench.harness import cli
from bench.harness.mqtt import Connection
from bench.harness.procstat import proc_status_kb
from bench.harness.report import Row, print_table, verdict
from bench.harness.stack import BIN, BRIDGE_IDENTITY, TOPIC_ROOT, Stack, running_stack
from edge_agent.outbox import Outbox
from edge_agent.series import Marks, UniqueTs
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Simulator
from telemetry_common.settings import env_for
from telemetry_common.topics import Topics

GATEWAY: Final = "bench-edge"
TARGET_APPEND: Final = 50_000.0
TARGET_DRAIN_S: Final = 30.0
TARGET_RSS_MB: Final = 80.0


def fill(path: Path, chargers: int, seconds: int, tx: int) -> tuple[int, float, float]:
    """Append ``chargers x seconds`` simulated readings in transactions of ``tx``; returns
    (readings, seconds spent inside append, seconds spent in the unique-ts rule)."""
    sim = Simulator(GATEWAY, chargers, seed=1)
    t0 = datetime.now(UTC) - timedelta(seconds=seconds + 60)
    spent = rule = 0.0
    n = 0
    pending: list[bytes] = []
    marks: Marks = {}
    with Outbox(path) as box:
        unique = UniqueTs(box.series_marks())
        for s in range(seconds):
            captures = sim.sample(t0 + timedelta(seconds=s), 1.0)
            start = time.perf_counter()  # the agent's unique-ts rule, before the bodies
            stamped, touched = unique.apply(captures)
            rule += time.perf_counter() - start
            marks.update(touched)
            pending += [c.to_body() for c in stamped]
            if len(pending) >= tx or s == seconds - 1:
                start = time.perf_counter()
                box.append(pending, marks)
                spent += time.perf_counter() - start
                n += len(pending)
                pending, marks = [], {}
    return n, spent, rule


class Counter:
    """Readings that reach the broker, counted by a QoS 1 subscriber with the bridge's identity."""

    def __init__(self) -> None:
        self.readings = 0
        self._lock = threading.Lock()

    def subscribe(self, stack: Stack) -> Connection:
        return Connection(
            "bench-counter",
            stack.service_port,
            identity=stack.identity(BRIDGE_IDENTITY),
            subscribe=(Topics(TOPIC_ROOT).readings(GATEWAY), 1),
            on_message=self._on_message,
        )

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        n = len(orjson.loads(msg.payload)["readings"])
        with self._lock:
            self.readings += n


def drain(env: dict[str, str], counter: Counter, expected: int, timeout: float) -> dict[str, Any]:
    """Run ``edge-agent outbox drain --json``; wall time, its result, peak RSS, arrivals."""
    before = counter.readings
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "edge-agent"), "outbox", "drain", "--json", "--timeout", str(timeout)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    try:
        while proc.poll() is None:
            peak = max(peak, proc_status_kb(proc.pid, "VmHWM") or 0)
            time.sleep(0.02)
        wall = time.perf_counter() - start
        out = proc.stdout.read() if proc.stdout else b""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1]) if out.strip() else {}
    deadline = time.monotonic() + 30
    while counter.readings - before < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "wall_s": wall,
        "result": result,
        "peak_rss_mb": peak / 1024,
        "arrived": counter.readings - before,
        "exit": proc.returncode,
    }


def drain_env(stack: Stack, a: argparse.Namespace) -> dict[str, str]:
    """The environment of ``edge-agent outbox drain`` as gateway GATEWAY (outbox path aside)."""
    return env_for(
        EdgeSettings,
        gateway_id=GATEWAY,
        topic_root=TOPIC_ROOT,
        mqtt=stack.mqtt_settings(GATEWAY),
        log_format="json",
        log_level="WARNING",
        batch_max_readings=a.batch,
        max_inflight_batches=a.inflight,
    )


def outbox_env(path: Path) -> dict[str, str]:
    return env_for(EdgeSettings, outbox_path=path)


def run(a: argparse.Namespace) -> dict[str, Any]:
    with (
        cli.workdir("bench-edge-", a.keep) as work,
        running_stack(work, [GATEWAY], influxd=False) as stack,
    ):
        counter = Counter()
        sub = counter.subscribe(stack)
        try:
            fig: dict[str, Any] = {}
            big = work / "big.sqlite3"
            n, spent, rule = fill(big, a.chargers, a.seconds, a.tx)
            fig["append"] = {"readings": n, "seconds": spent, "rate": n / spent, "tx": a.tx}
            fig["unique_ts_us"] = rule / n * 1e6
            small_tx = work / "tick.sqlite3"
            m, spent_tick, _ = fill(small_tx, a.chargers, min(a.seconds, 600), a.chargers)
            fig["append_tick"] = {"readings": m, "rate": m / spent_tick, "tx": a.chargers}
            small_tx.unlink()
            env = drain_env(stack, a)
            fig["file_mb"] = big.stat().st_size / 2**20
            fig["drain"] = drain(env | outbox_env(big), counter, n, 300)
            small = work / "small.sqlite3"
            k, _, _ = fill(small, a.chargers, a.seconds // 10, a.tx)
            fig["drain_small"] = drain(env | outbox_env(small), counter, k, 300)
            fig["drain_small"]["readings"] = k
            return fig
        finally:
            sub.close()


def report(fig: dict[str, Any]) -> None:
    ap, tick, dr, sm = fig["append"], fig["append_tick"], fig["drain"], fig["drain_small"]
    res = dr["result"]
    rate = res.get("rate", 0.0)
    rows: list[Row] = [
        (
            f"append, {ap['tx']}-reading transactions",
            f"{ap['rate']:,.0f} readings/s ({ap['readings']:,} in {ap['seconds']:.2f} s)",
            f">= {TARGET_APPEND:,.0f}: {verdict(ap['rate'] >= TARGET_APPEND)}",
        ),
        (f"append, {tick['tx']}-reading transactions", f"{tick['rate']:,.0f} readings/s", "-"),
        ("unique-ts rule at capture", f"{fig['unique_ts_us']:.2f} us per reading", "-"),
        ("outbox file", f"{fig['file_mb']:.0f} MiB for {ap['readings']:,} readings", "-"),
        (
            "publish rate (drain, TLS, QoS 1)",
            f"{rate:,.0f} readings/s ({res.get('published', 0):,} published)",
            "-",
        ),
        (
            f"drain {ap['readings']:,} backlog",
            f"{dr['wall_s']:.1f} s wall (publishing {res.get('seconds', 0):.1f} s)",
            f"<= {TARGET_DRAIN_S:.0f} s: {verdict(dr['wall_s'] <= TARGET_DRAIN_S)}",
        ),
        (
            "arrived at a subscriber",
            f"{dr['arrived']:,} of {ap['readings']:,}; left in outbox {res.get('pending')}",
            verdict(dr["arrived"] >= ap["readings"] and res.get("pending") == 0),
        ),
        (
            "drain peak RSS",
            f"{dr['peak_rss_mb']:.1f} MB",
            f"<= {TARGET_RSS_MB:.0f} MB: {verdict(dr['peak_rss_mb'] <= TARGET_RSS_MB)}",
        ),
        (
            f"drain peak RSS, {sm['readings']:,} backlog",
            f"{sm['peak_rss_mb']:.1f} MB ({sm['wall_s']:.1f} s)",
            f"flat: {verdict(abs(dr['peak_rss_mb'] - sm['peak_rss_mb']) <= 5)}",
        ),
    ]
    print_table(rows)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("bench.edge_outbox", __doc__.split("\n\n")[0])
    p.add_argument("--chargers", type=int, default=100)
    p.add_argument("--seconds", type=int, default=3600, help="simulated seconds at 1 Hz")
    p.add_argument("--tx", type=int, default=1000, help="readings per append transaction")
    p.add_argument("--batch", type=int, default=1000, help="readings per MQTT message")
    p.add_argument("--inflight", type=int, default=4, help="batches awaiting PUBACK")
    cli.add_output_options(p)
    cli.run_and_report(p.parse_args(argv), run, report)


if __name__ == "__main__":
    main()
