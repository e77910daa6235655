"""Fleet soak: a fleet of real edge agents against the real stack for ``--minutes``, with a bridge
killed and the broker restarted on the way; does it lose nothing and stay flat?

``.venv/bin/python -m bench.fleet_soak [--minutes 30] [--gateways 1000] [--chargers 10]``

1. Issues a certificate per gateway (CN = gateway id, ``provisioning.pki``: P-256 keys, well
   under a millisecond each) into a new state directory, then starts the stack exactly as
   ``telemetry-stack up --gateways 0`` does, through its Python API (``telemetry_stack.stack``):
   Mosquitto with TLS, client certificates, ACLs and persistence; InfluxDB 1.x; the bridge; the
   API; the rollup and sessions jobs, on free loopback ports.
2. Starts ``--processes`` processes of ``bench.fleet_edges`` holding the ``--gateways`` between
   them (one MQTT session each; 8 x 125 by default). Each gateway is the edge agent's own code
   (EdgeAgent, its SQLite outbox, its publisher honouring stored acknowledgements, its
   simulator), not a model of it: 125 agents in one asyncio process cost little at one message
   per gateway every 10 s (a paho network thread each; the outboxes are SQLite files in the
   working directory), and a twin of the outbox would prove nothing about the real one. Not
   more than 150 a process: paho's network loop uses select(), which cannot watch a descriptor
   above 1023, and a gateway holds about six (socket, wake-up pair, SQLite file, WAL, shared
   memory); with 250 a process a third of the gateways never connected. The clock starts once
   every gateway is connected. Every charger sends a reading every ``--interval`` s; the
   gateways' first readings are spread evenly over the interval.
3. At ``--kill-bridge-at`` minutes the bridge is SIGKILLed and started again (``telemetry-stack
   restart bridge``: same MQTT session, the broker kept its queue); at ``--restart-broker-at``
   minutes Mosquitto is stopped (SIGTERM: persistence written) and started again
   (``telemetry-stack restart mosquitto``). Negative: not done.
4. Meanwhile it samples every ``--sample-seconds`` the RSS and CPU of the bridge, the API,
   Mosquitto and InfluxDB, and asks the API ``GET /v1/chargers/{id}/latest`` for random chargers
   (``--latest-rate`` a second, one client, while the fleet captures): the answer's latency and
   age. Every minute it prints a progress line.
5. Then the gateways stop capturing and send what is left; each returns once its outbox is empty
   (every reading confirmed stored) or after ``--drain-seconds``. The loss check asks InfluxDB,
   per gateway, for the count of distinct seqs stored, their count, min and max, and compares
   them with the seqs the gateway captured (1..last): lost = captured - distinct stored.

Figures: lost readings (per gateway; 0 is the goal), readings still unconfirmed at the end,
capture-to-stored-acknowledgement delay p50/p99/max (the edge's view of publish-to-stored: from
the capture into the outbox to the bridge's stored acknowledgement arriving at the gateway, so it
includes the outbox, the broker, the bridge's batch and write and the acknowledgement's flush),
also without the readings captured from 10 s before a fault to 60 s after it; ``latest``
latency p50/p99 and age p99; the RSS of the bridge (each incarnation) and the API as
first/median/last/max and its growth over the second half (median of the last quarter minus that
of the second); CPU seconds per second of each server and the edge processes.

Prints a table, then every figure as JSON (also to ``--json``). A script, not a test; bounded in
time (``--minutes`` + ``--drain-seconds`` + start-up), and every process it starts is stopped by
PID on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bench.harness import cli
from bench.harness.procstat import cpu_seconds, machine_busy, proc_status_kb
from bench.harness.report import Row, percentile, print_table, verdict
from bench.harness.stack import (
    REPO,
    ManagedProcess,
    stack_down,
    stack_pid,
    stack_restart,
    stack_up,
)
from provisioning import pki as pki_mod
from telemetry_common.influxql import quote_string

PREFIX: Final = "soak-gw-"
#: Gateways one edge process holds at most (~6 descriptors each, below select()'s 1024).
MAX_PER_PROCESS: Final = 150
SERVERS: Final = ("bridge", "api", "mosquitto", "influxd", "rollups", "sessions")
#: Readings captured this long before a fault and up to this long after it are "near a fault".
FAULT_BEFORE_S: Final = 10.0
FAULT_AFTER_S: Final = 60.0


def gateway_name(i: int) -> str:
    return f"{PREFIX}{i:05d}"


# --- the edge processes --------------------------------------------------------------------


def start_edges(a: argparse.Namespace, state: dict[str, Any], work: Path) -> list[ManagedProcess]:
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
            "bench.fleet_edges",
            "--port",
            str(state["mqtt"]["tls_port"]),
            "--pki-dir",
            str(state["pki_dir"]),
            "--prefix",
            PREFIX,
            "--first",
            str(first),
            "--count",
            str(count),
            "--total",
            str(a.gateways),
            "--chargers",
            str(a.chargers),
            "--interval",
            str(a.interval),
            "--topic-root",
            str(state["topic_root"]),
            "--outbox-dir",
            str(work / "outboxes"),
            "--status",
            str(work / f"edges-{k}.status.json"),
            "--delays",
            str(work / f"edges-{k}.delays.jsonl"),
            "--go-file",
            str(work / "edges.go"),
            "--stop-file",
            str(work / "edges.stop"),
            "--drain-seconds",
            str(a.drain_seconds),
            "--max-seconds",
            str(a.minutes * 60 + 600),
            "--out",
            str(work / f"edges-{k}.json"),
        ]
        proc = ManagedProcess(
            f"edges-{k}", argv, log_file=work / f"edges-{k}.log", env=dict(os.environ), cwd=REPO
        )
        proc.start()
        procs.append(proc)
    return procs


class DelayReader:
    """The delays the edge processes append (a JSON list per line), read on from where the last
    read stopped (complete lines only)."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = dict.fromkeys(paths, 0)

    def new(self) -> list[int]:
        out: list[int] = []
        for path, off in self.offsets.items():
            try:
                with path.open("rb") as fh:
                    fh.seek(off)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                out.extend(json.loads(line))
            self.offsets[path] = off + end
        return out


def wait_connected(
    a: argparse.Namespace, work: Path, procs: list[ManagedProcess], timeout: float
) -> float:
    """Until every gateway is connected (the edge processes' status); seconds it took."""
    t0 = time.monotonic()
    while True:
        up = sum(s.get("connected", 0) for s in read_status(work, procs))
        if up == a.gateways:
            return time.monotonic() - t0
        for p in procs:
            if not p.is_running():
                raise RuntimeError(f"{p.name} exited ({p.returncode()}):\n{p.log_tail()}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {up} of {a.gateways} gateways connected in {timeout:.0f}s")
        time.sleep(1.0)


def read_status(work: Path, procs: list[ManagedProcess]) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        try:
            out.append(json.loads((work / f"{p.name}.status.json").read_text()))
        except (OSError, ValueError):
            out.append({})
    return out


# --- sampling -------------------------------------------------------------------------------


class Sampler:
    """RSS and CPU of the servers by their recorded pids (a restarted one has a new pid; CPU is
    summed over the pids each had), and of the edge processes."""

    def __init__(self, state_dir: Path, edges: list[ManagedProcess]) -> None:
        self.state_dir = state_dir
        self.edges = edges
        self.t0 = time.monotonic()
        self.rss: dict[str, list[tuple[float, int, int]]] = {s: [] for s in SERVERS}
        self.cpu_by_pid: dict[str, dict[int, float]] = {s: {} for s in [*SERVERS, "edges"]}
        self.machine0 = machine_busy()
        self.lock = threading.Lock()

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        with self.lock:
            for name in SERVERS:
                pid = stack_pid(self.state_dir, name)
                if pid is None:
                    continue
                rss = proc_status_kb(pid, "VmRSS")
                if rss is not None:
                    self.rss[name].append((t, pid, rss))
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    self.cpu_by_pid[name][pid] = cpu
            for p in self.edges:
                if p.pid is not None and (cpu := cpu_seconds(p.pid)) is not None:
                    self.cpu_by_pid["edges"][p.pid] = cpu

    def cpu_figures(self) -> dict[str, float]:
        span = time.monotonic() - self.t0
        busy0, total0 = self.machine0
        busy1, total1 = machine_busy()
        out = {name: sum(by.values()) / span for name, by in self.cpu_by_pid.items()}
        out["machine_cores_busy"] = (
            (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0
        )
        return out


def rss_stats(samples: list[tuple[float, int, int]]) -> dict[str, Any] | None:
    """first/median/last/max RSS in MB of a list of samples, the span they cover, and the growth
    over the second half: the median of the last quarter minus that of the second quarter (after
    the warm-up; ~0 when flat)."""
    if not samples:
        return None
    mb = [kb / 1024 for _, _, kb in samples]
    n = len(mb)
    q2, q4 = mb[n // 4 : n // 2], mb[3 * n // 4 :]
    return {
        "second_half_growth_mb": (
            statistics.median(q4) - statistics.median(q2) if q2 and q4 else None
        ),
        "samples": len(mb),
        "from_s": samples[0][0],
        "to_s": samples[-1][0],
        "first_mb": mb[0],
        "median_mb": statistics.median(mb),
        "last_mb": mb[-1],
        "max_mb": max(mb),
    }


def by_pid(samples: list[tuple[float, int, int]]) -> list[list[tuple[float, int, int]]]:
    runs: list[list[tuple[float, int, int]]] = []
    for s in samples:
        if not runs or runs[-1][-1][1] != s[1]:
            runs.append([])
        runs[-1].append(s)
    return runs


class LatestProbe(threading.Thread):
    """GET latest of random chargers at ``rate`` a second: latency (ms), age of the answer's
    reading (s), status codes; stops when ``stop`` is set."""

    def __init__(self, url: str, key: str, chargers: list[str], rate: float) -> None:
        super().__init__(name="latest-probe", daemon=True)
        self.url, self.key, self.chargers, self.rate = url, key, chargers, rate
        self.stop = threading.Event()
        self.latency_ms: list[tuple[float, float]] = []  # (wall time, ms)
        self.age_s: list[tuple[float, float]] = []  # (wall time, s)
        self.status: dict[str, int] = {}

    def run(self) -> None:
        period = 1.0 / self.rate
        with httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=10) as c:
            nxt = time.monotonic()
            while not self.stop.is_set():
                cid = random.choice(self.chargers)  # noqa: S311
                t = time.monotonic()
                try:
                    r = c.get(f"/v1/chargers/{cid}/latest")
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code, r = type(exc).__name__, None
                ms = (time.monotonic() - t) * 1000
                self.status[code] = self.status.get(code, 0) + 1
                if r is not None and r.status_code == 200:
                    self.latency_ms.append((time.time(), ms))
                    ts = r.json().get("ts")
                    if isinstance(ts, str):
                        at = datetime.fromisoformat(ts.replace("Z", "+00:00"))
                        now = time.time()
                        self.age_s.append((now, now - at.astimezone(UTC).timestamp()))
                nxt += period
                self.stop.wait(max(0.0, nxt - time.monotonic()))


# --- the loss check --------------------------------------------------------------------------


def influx_per_gateway(url: str, db: str, q: str) -> dict[str, list[Any]]:
    """One InfluxQL query grouped by gateway_id: the first row of each gateway's series."""
    r = httpx.post(f"{url}/query", data={"q": q, "db": db}, timeout=600)
    r.raise_for_status()
    res = r.json()["results"][0]
    if "error" in res:
        raise RuntimeError(f"InfluxQL {q!r}: {res['error']}")
    return {s["tags"]["gateway_id"]: s["values"][0] for s in res.get("series", [])}


def stored_seqs(url: str, db: str, gateways: list[str]) -> dict[str, set[int]]:
    """Every seq InfluxDB holds for each of ``gateways`` (100 gateways a query)."""
    out: dict[str, set[int]] = {gw: set() for gw in gateways}
    for k in range(0, len(gateways), 100):
        names = " OR ".join(f"gateway_id = {quote_string(gw)}" for gw in gateways[k : k + 100])
        q = f"SELECT seq FROM readings WHERE {names} GROUP BY gateway_id"
        r = httpx.post(f"{url}/query", data={"q": q, "db": db}, timeout=600)
        r.raise_for_status()
        res = r.json()["results"][0]
        if "error" in res:
            raise RuntimeError(f"InfluxQL {q[:200]!r}: {res['error']}")
        for series in res.get("series", []):
            out[series["tags"]["gateway_id"]].update(int(row[1]) for row in series["values"])
    return out


def loss_check(state: dict[str, Any], per_gw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per gateway, InfluxDB's distinct seqs against the captured ones. A captured seq neither
    stored nor still in the gateway's outbox is lost (the edge forgot it unstored); one still in
    the outbox is only late (the drain ended first). Gateways missing seqs are looked at seq by
    seq."""
    url, db = state["influx"]["url"], state["influx"]["database"]
    t0 = time.monotonic()
    stats = influx_per_gateway(
        url, db, "SELECT count(seq), min(seq), max(seq) FROM readings GROUP BY gateway_id"
    )
    distinct = influx_per_gateway(
        url, db, "SELECT count(distinct(seq)) FROM readings GROUP BY gateway_id"
    )
    lost: dict[str, int] = {}
    late: dict[str, int] = {}
    beyond: dict[str, int] = {}
    dupes = 0
    captured = 0
    short = []
    for gw, rec in per_gw.items():
        captured += rec["captured"]
        n = stats.get(gw, [None, 0])[1]
        n_distinct = distinct.get(gw, [None, 0])[1]
        dupes += n - n_distinct
        if n_distinct != rec["captured"]:
            short.append(gw)
    for gw, stored in stored_seqs(url, db, short).items():
        rec = per_gw[gw]
        pending = {q for a, b in rec["pending_ranges"] for q in range(a, b + 1)}
        wanted = set(range(rec["first_seq"], rec["last_seq"] + 1)) if rec["captured"] else set()
        missing = wanted - stored
        if missing - pending:
            lost[gw] = len(missing - pending)
        if missing & pending:
            late[gw] = len(missing & pending)
        if stored - wanted:
            beyond[gw] = len(stored - wanted)
    return {
        "gateways_checked": len(per_gw),
        "captured": captured,
        "stored_distinct": sum(v[1] for v in distinct.values()),
        "lost": sum(lost.values()),
        "gateways_with_loss": lost,
        "not_stored_still_in_outbox": sum(late.values()),
        "gateways_with_readings_still_in_outbox": late,
        "points_with_a_repeated_seq": dupes,
        "gateways_with_seqs_beyond_captured": beyond,
        "unconfirmed_at_end": sum(rec["pending"] for rec in per_gw.values()),
        "query_seconds": time.monotonic() - t0,
    }


# --- the run ---------------------------------------------------------------------------------


def progress(
    a: argparse.Namespace,
    t_min: float,
    status: list[dict[str, Any]],
    minute_delays: list[int],
    sampler: Sampler,
    probe: LatestProbe,
    n_latest0: int,
) -> None:
    cap = sum(s.get("captured", 0) for s in status)
    conf = sum(s.get("confirmed", 0) for s in status)
    unc = sum(s.get("unconfirmed", 0) for s in status)
    conn = sum(s.get("connected", 0) for s in status)
    timeouts = sum(s.get("stored_timeouts", 0) for s in status)
    d = sorted(minute_delays)
    lat = sorted(ms for _, ms in probe.latency_ms[n_latest0:])
    t_from = probe.latency_ms[n_latest0][0] if len(probe.latency_ms) > n_latest0 else time.time()
    age = sorted(x for t, x in probe.age_s if t >= t_from)
    rss = {n: (v[-1][2] / 1024 if v else float("nan")) for n, v in sampler.rss.items()}
    cli.log(
        f"{t_min:5.1f} min: captured {cap:,}, confirmed stored {conf:,} "
        f"(backlog {cap - conf:,}, unconfirmed {unc:,}), {conn}/{a.gateways} connected, "
        f"{timeouts} stored timeouts; last minute's confirmations p99 "
        f"{percentile(d, 99):,.0f} ms ({len(d):,}), latest p99 {percentile(lat, 99):.0f} ms "
        f"(age p99 {percentile(age, 99):.0f} s); "
        f"RSS bridge {rss['bridge']:.0f} MB, api {rss['api']:.0f} MB, "
        f"mosquitto {rss['mosquitto']:.0f} MB, influxd {rss['influxd']:.0f} MB"
    )


def run(a: argparse.Namespace) -> dict[str, Any]:
    names = [gateway_name(i) for i in range(a.gateways)]
    chargers = [f"{gw}-cp{c:03d}" for gw in names for c in range(1, a.chargers + 1)]
    fig: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateways": a.gateways,
        "chargers": len(chargers),
        "interval_s": a.interval,
        "processes": a.processes,
        "minutes": a.minutes,
        "load_average_start": os.getloadavg(),
    }
    with cli.workdir("bench-soak-", a.keep) as work:
        state_dir = work / "stack"
        t = time.monotonic()
        pki = pki_mod.init(state_dir / "pki")
        for gw in names:
            pki_mod.issue_gateway(pki.dir, gw)
        fig["certificates_s"] = time.monotonic() - t
        cli.log(f"{a.gateways:,} gateway certificates in {fig['certificates_s']:.1f}s")
        edges: list[ManagedProcess] = []
        probe: LatestProbe | None = None
        try:
            state = stack_up(state_dir, lambda line: cli.log(f"stack: {line}"))
            edges = start_edges(a, state, work)
            fig["connect_s"] = wait_connected(a, work, edges, a.connect_timeout)
            cli.log(f"{a.gateways:,} gateways connected in {fig['connect_s']:.0f}s")
            delay_reader = DelayReader([work / f"{p.name}.delays.jsonl" for p in edges])
            (work / "edges.go").write_text("go", encoding="utf-8")
            t_start = time.monotonic()
            sampler = Sampler(state_dir, edges)
            probe = LatestProbe(
                state["api"]["url"], state["api"]["keys"]["read"], chargers, a.latest_rate
            )
            probe.start()
            faults = sorted(
                [(m * 60, "kill-bridge") for m in [a.kill_bridge_at] if m >= 0]
                + [(m * 60, "restart-broker") for m in [a.restart_broker_at] if m >= 0]
            )
            fig["faults"] = []
            end = t_start + a.minutes * 60
            next_sample = t_start
            next_minute = t_start + 60
            minute_delays: list[int] = []
            n_latest0 = 0
            while (now := time.monotonic()) < end:
                for p in edges:
                    if not p.is_running():
                        raise RuntimeError(f"{p.name} exited ({p.returncode()}):\n{p.log_tail()}")
                if faults and now - t_start >= faults[0][0]:
                    _, what = faults.pop(0)
                    sampler.sample()
                    fig["faults"].append(do_fault(state_dir, what, t_start))
                if now >= next_sample:
                    sampler.sample()
                    next_sample += a.sample_seconds
                if now >= next_minute:
                    status = read_status(work, edges)
                    minute_delays.extend(delay_reader.new())
                    progress(
                        a, (now - t_start) / 60, status, minute_delays, sampler, probe, n_latest0
                    )
                    minute_delays = []
                    n_latest0 = len(probe.latency_ms)
                    next_minute += 60
                time.sleep(0.5)
            probe.stop.set()  # (no new readings in the drain: their age means nothing)
            cli.log("capturing stopped; the gateways send what is left ...")
            (work / "edges.stop").write_text("stop", encoding="utf-8")
            t_drain = time.monotonic()
            while any(p.is_running() for p in edges):
                if time.monotonic() - t_drain > a.drain_seconds + 60:
                    raise RuntimeError("the edge processes did not finish draining in time")
                sampler.sample()
                time.sleep(min(a.sample_seconds, 2.0))
            fig["drain_s"] = time.monotonic() - t_drain
            fig["cpu_s_per_s"] = sampler.cpu_figures()
            recs = []
            for p in edges:
                if p.returncode() != 0:
                    raise RuntimeError(f"{p.name} failed ({p.returncode()}):\n{p.log_tail()}")
                recs.append(json.loads((work / f"{p.name}.json").read_text()))
            per_gw = {gw: r for rec in recs for gw, r in rec["per_gateway"].items()}
            fig["drained"] = all(rec["drained"] for rec in recs)
            fig["stored_timeouts"] = sum(rec["stored_timeouts"] for rec in recs)
            fig["stored_holes"] = sum(rec.get("stored_holes", 0) for rec in recs)
            cli.log("loss check: InfluxDB's seqs per gateway against the captured ones ...")
            fig["loss"] = loss_check(state, per_gw)
            fig["stored_delay"] = delay_figures(recs, fig["faults"], t_start)
            fig["latest"] = latest_figures(probe, fig["faults"])
            fig["rss"] = {
                "bridge": [rss_stats(run) for run in by_pid(sampler.rss["bridge"])],
                "api": rss_stats(sampler.rss["api"]),
                "mosquitto": [rss_stats(run) for run in by_pid(sampler.rss["mosquitto"])],
                "influxd": rss_stats(sampler.rss["influxd"]),
                "rollups": rss_stats(sampler.rss["rollups"]),
                "sessions": rss_stats(sampler.rss["sessions"]),
            }
        finally:
            if probe is not None:
                probe.stop.set()
            (work / "edges.stop").write_text("stop", encoding="utf-8")
            for p in edges:
                p.stop(timeout=15)
            if (state_dir / "stack.json").exists():
                for line in stack_down(state_dir):
                    cli.log(f"stack: {line}")
    fig["load_average_end"] = os.getloadavg()
    return fig


def do_fault(state_dir: Path, what: str, t_start: float) -> dict[str, Any]:
    at = time.monotonic() - t_start
    t = time.monotonic()
    if what == "kill-bridge":
        pid = stack_pid(state_dir, "bridge")
        assert pid is not None
        os.kill(pid, 9)
        cli.log(f"bridge (pid {pid}) SIGKILLed at {at / 60:.1f} min; starting it again ...")
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            time.sleep(0.05)
        new = stack_restart(state_dir, "bridge")
    else:
        pid = stack_pid(state_dir, "mosquitto")
        cli.log(f"broker (pid {pid}) stopped at {at / 60:.1f} min; starting it again ...")
        new = stack_restart(state_dir, "mosquitto")
    took = time.monotonic() - t
    cli.log(f"{what}: back (pid {new}) after {took:.1f}s")
    return {
        "what": what,
        "at_s": at,
        "wall_t": time.time() - (time.monotonic() - t),
        "back_after_s": took,
    }


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "Z"


def delay_figures(
    recs: list[dict[str, Any]], faults: list[dict[str, Any]], t_start: float
) -> dict[str, Any]:
    all_ms: list[int] = []
    calm_ms: list[int] = []
    for rec in recs:
        for at, ms in zip(rec["captured_at"], rec["delay_ms"], strict=True):
            all_ms.append(ms)
            if not near_fault(at, faults):
                calm_ms.append(ms)
    all_ms.sort()
    calm_ms.sort()
    return {
        "readings": len(all_ms),
        "p50_ms": percentile(all_ms, 50),
        "p99_ms": percentile(all_ms, 99),
        "max_ms": all_ms[-1] if all_ms else None,
        "away_from_faults_readings": len(calm_ms),
        "away_from_faults_p50_ms": percentile(calm_ms, 50),
        "away_from_faults_p99_ms": percentile(calm_ms, 99),
        "away_from_faults_max_ms": calm_ms[-1] if calm_ms else None,
    }


def near_fault(t: float, faults: list[dict[str, Any]]) -> bool:
    """True if wall time ``t`` is within [fault - FAULT_BEFORE_S, fault + FAULT_AFTER_S]."""
    return any(f["wall_t"] - FAULT_BEFORE_S <= t <= f["wall_t"] + FAULT_AFTER_S for f in faults)


def latest_figures(probe: LatestProbe, faults: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": sum(probe.status.values()), "status": probe.status}
    for label, calm in (("", False), ("away_from_faults_", True)):
        ms = sorted(x for t, x in probe.latency_ms if not (calm and near_fault(t, faults)))
        age = sorted(x for t, x in probe.age_s if not (calm and near_fault(t, faults)))
        out |= {
            f"{label}answers": len(ms),
            f"{label}p50_ms": percentile(ms, 50),
            f"{label}p99_ms": percentile(ms, 99),
            f"{label}max_ms": ms[-1] if ms else None,
            f"{label}age_p50_s": percentile(age, 50),
            f"{label}age_p99_s": percentile(age, 99),
            f"{label}age_max_s": age[-1] if age else None,
        }
    return out


# --- the report -----------------------------------------------------------------------------


def _mb(s: dict[str, Any] | None) -> str:
    if s is None:
        return "n/a"
    return f"{s['first_mb']:.0f} / {s['median_mb']:.0f} / {s['last_mb']:.0f} / {s['max_mb']:.0f}"


def _span(s: dict[str, Any] | None) -> str:
    if s is None:
        return ""
    growth = s["second_half_growth_mb"]
    return (
        f"{s['samples']} samples, {s['from_s'] / 60:.1f}-{s['to_s'] / 60:.1f} min; second half "
        + ("n/a" if growth is None else f"{growth:+.0f} MB")
    )


def print_report(fig: dict[str, Any]) -> None:
    loss, d, lt, cpu = fig["loss"], fig["stored_delay"], fig["latest"], fig["cpu_s_per_s"]
    faults = ", ".join(
        f"{f['what']} at {f['at_s'] / 60:.1f} min (back in {f['back_after_s']:.1f} s)"
        for f in fig["faults"]
    )
    rows: list[Row] = [
        (
            "fleet",
            f"{fig['chargers']:,} chargers",
            f"{fig['gateways']:,} gateways (one MQTT session each) in {fig['processes']} "
            f"processes, a reading per charger every {fig['interval_s']:g} s, "
            f"{fig['minutes']:g} min; {faults or 'no faults'}",
        ),
        (
            "readings lost",
            f"{loss['lost']:,}",
            f"of {loss['captured']:,} captured ({loss['stored_distinct']:,} stored): neither "
            f"stored nor in their outbox; {len(loss['gateways_with_loss'])} gateways with loss; "
            f"{verdict(loss['lost'] == 0)}",
        ),
        (
            "not stored yet, still in the outboxes",
            f"{loss['not_stored_still_in_outbox']:,}",
            f"{loss['unconfirmed_at_end']:,} rows unconfirmed at the end (drained: "
            f"{fig['drained']}, in {fig['drain_s']:.0f} s of --drain-seconds)",
        ),
        (
            "stored more than once / beyond captured",
            f"{loss['points_with_a_repeated_seq']:,} / "
            f"{len(loss['gateways_with_seqs_beyond_captured'])}",
            "points sharing a gateway's seq; gateways with seqs stored beyond those captured",
        ),
        (
            "capture to stored ack p50 / p99 / max",
            f"{d['p50_ms']:,.0f} / {d['p99_ms']:,.0f} / {d['max_ms'] or 0:,.0f} ms",
            f"{d['readings']:,} readings; at the gateways: stored timeouts "
            f"{fig['stored_timeouts']:,}, holes sent again {fig.get('stored_holes', 0):,}",
        ),
        (
            "  away from the faults",
            f"{d['away_from_faults_p50_ms']:,.0f} / {d['away_from_faults_p99_ms']:,.0f} / "
            f"{d['away_from_faults_max_ms'] or 0:,.0f} ms",
            f"{d['away_from_faults_readings']:,} readings captured outside "
            f"[fault - {FAULT_BEFORE_S:.0f} s, fault + {FAULT_AFTER_S:.0f} s]",
        ),
        (
            "GET latest p50 / p99 / max",
            f"{lt['p50_ms']:.1f} / {lt['p99_ms']:.1f} / {lt['max_ms'] or 0:.0f} ms",
            f"{lt['requests']:,} requests, status {lt['status']}",
        ),
        (
            "  away from the faults",
            f"{lt['away_from_faults_p50_ms']:.1f} / {lt['away_from_faults_p99_ms']:.1f} / "
            f"{lt['away_from_faults_max_ms'] or 0:.0f} ms",
            f"{lt['away_from_faults_answers']:,} answers asked outside the same windows",
        ),
        (
            "latest's age p50 / p99 / max",
            f"{lt['age_p50_s']:.1f} / {lt['age_p99_s']:.1f} / {lt['age_max_s'] or 0:.0f} s",
            f"now minus the ts of the reading served (readings every {fig['interval_s']:g} s)",
        ),
        (
            "  away from the faults",
            f"{lt['away_from_faults_age_p50_s']:.1f} / {lt['away_from_faults_age_p99_s']:.1f} / "
            f"{lt['away_from_faults_age_max_s'] or 0:.0f} s",
            "",
        ),
    ]
    for k, s in enumerate(fig["rss"]["bridge"], start=1):
        rows.append((f"bridge {k} RSS first/median/last/max", f"{_mb(s)} MB", _span(s)))
    rows.append(
        ("API RSS first/median/last/max", f"{_mb(fig['rss']['api'])} MB", _span(fig["rss"]["api"]))
    )
    for k, s in enumerate(fig["rss"]["mosquitto"], start=1):
        rows.append((f"mosquitto {k} RSS first/median/last/max", f"{_mb(s)} MB", _span(s)))
    for name in ("rollups", "sessions"):
        rows.append(
            (
                f"{name} RSS first/median/last/max",
                f"{_mb(fig['rss'][name])} MB",
                _span(fig["rss"][name]),
            )
        )
    rows.append(
        (
            "influxd RSS first/median/last/max",
            f"{_mb(fig['rss']['influxd'])} MB",
            _span(fig["rss"]["influxd"]),
        )
    )
    rows.append(
        (
            "CPU bridge / mosquitto / influxd / api",
            f"{cpu['bridge']:.2f} / {cpu['mosquitto']:.2f} / {cpu['influxd']:.2f} / "
            f"{cpu['api']:.2f} s/s",
            f"rollups {cpu['rollups']:.2f}, sessions {cpu['sessions']:.2f}, edge processes "
            f"{cpu['edges']:.2f} s/s; machine {cpu['machine_cores_busy']:.2f} "
            "cores busy (every process on it, over the run and the drain)",
        )
    )
    print_table(rows)


def summary(fig: dict[str, Any]) -> dict[str, Any]:
    """The figures without the per-gateway lists (those are in --json)."""
    out = dict(fig)
    out["loss"] = {k: (len(v) if isinstance(v, dict) else v) for k, v in fig["loss"].items()}
    return out


def report(fig: dict[str, Any]) -> None:
    print_report(fig)
    print(json.dumps(summary(fig), indent=2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "bench.fleet_soak",
        "Fleet soak: real edge agents (one MQTT session per gateway) against the stack of "
        "`telemetry-stack up`, a bridge killed and the broker restarted on the way; loss per "
        "seq, RSS over time, publish-to-stored and latest latency, CPU. Loopback only.",
    )
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--minutes", type=float, default=30.0, help="how long the fleet captures")
    p.add_argument("--gateways", type=int, default=1_000, help="gateways, one MQTT session each")
    p.add_argument("--chargers", type=int, default=10, help="chargers per gateway")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    p.add_argument(
        "--processes",
        type=int,
        default=8,
        help=f"edge processes holding the gateways (at most {MAX_PER_PROCESS} each)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=300.0, help="bound on the gateways connecting"
    )
    p.add_argument(
        "--kill-bridge-at",
        type=float,
        default=10.0,
        help="minute the bridge is SIGKILLed and restarted (<0: never)",
    )
    p.add_argument(
        "--restart-broker-at",
        type=float,
        default=20.0,
        help="minute Mosquitto is stopped and started again (<0: never)",
    )
    p.add_argument("--sample-seconds", type=float, default=10.0, help="RSS/CPU sampling period")
    p.add_argument("--latest-rate", type=float, default=10.0, help="GET latest per second")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=300.0,
        help="bound on the gateways sending what is left after the run",
    )
    cli.add_output_options(p)
    a = p.parse_args(argv)
    if not 1 <= a.gateways <= 99_999 or a.chargers < 1 or a.interval <= 0 or a.minutes <= 0:
        p.error("--gateways within 1..99,999; --chargers, --interval, --minutes positive")
    if not 1 <= a.processes <= min(32, a.gateways):
        p.error("--processes within 1..32 and at most --gateways")
    if -(-a.gateways // a.processes) > MAX_PER_PROCESS:
        p.error(
            f"at most {MAX_PER_PROCESS} gateways per process (paho's select() cannot watch a "
            "descriptor above 1023; bench/fleet_edges.py): raise --processes"
        )
    for flag in ("kill_bridge_at", "restart_broker_at"):
        if getattr(a, flag) >= a.minutes:
            p.error(f"--{flag.replace('_', '-')} must be within the run (< --minutes)")
    return a


def main(argv: list[str] | None = None) -> None:
    cli.run_and_report(parse_args(argv), run, report)


if __name__ == "__main__":
    main()
