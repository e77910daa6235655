"""More whole-stack fault scenarios (issue 6): InfluxDB answering slowly, one of two bridges
killed, the edge's disk budget exhausted during an outage, and a long outage drained while live
readings continue. Same oracle and counts as ``test_faults.py``: every reading an edge outbox
accepted is in InfluxDB exactly once, still held by the outbox, or dropped by the documented
budget policy; ``pytest -s`` prints one account per gateway. The gap report is checked against
reality: the bridges' confirmed gaps must name exactly the seqs InfluxDB lacks below the newest
seq it holds for each gateway (lost, dropped by policy, or held by a stopped agent alike: the
cloud cannot tell these apart, and must not miss any of them).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import ServerBinaryMissing, find_binary, free_port
from tests.support.delivery_checks import (
    assert_gap_report_matches,
    assert_latest_is_newest_stored,
    assert_nothing_lost,
    settle,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.prometheus import scrape
from tests.support.system_stack import (
    FAST_GAPS_ENV,
    SystemStack,
    gateway_services,
    stop_process,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system

GATEWAYS = ["gw-1", "gw-2"]
DROPPED_METRIC = "telemetry_edge_outbox_dropped_total"


@contextlib.contextmanager
def running_stack(
    tmp_path: Path, *, interval_s: float = 0.05, env: dict[str, str] | None = None
) -> Iterator[SystemStack]:
    """``telemetry-stack up`` with two simulated gateways of 5 chargers; ``down`` at the end."""
    with SystemStack(tmp_path / "stack", {**FAST_GAPS_ENV, **(env or {})}).running(
        len(GATEWAYS), 5, interval_s
    ) as s:
        yield s


def bridge_metric(stack: SystemStack, url: str, name: str) -> float:
    return float(stack.http_json(f"{url}/status")["metrics"].get(name, 0.0))


# --- 1. InfluxDB answering slowly --------------------------------------------------------------


def mosquitto_version() -> tuple[int, ...]:
    try:
        binary = find_binary("mosquitto", "mosquitto")
    except ServerBinaryMissing:
        return ()
    done = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", done.stdout + done.stderr)
    return tuple(int(n) for n in found.groups()) if found else ()


def test_influxdb_answering_slowly_backpressures_and_loses_nothing(tmp_path: Path) -> None:
    """InfluxDB behind a proxy that delays every chunk by 0.4 s for 10 s: the bridge's writes
    become slow (its own write-latency histogram says so) and fall behind; its unacknowledged
    messages stay within its MQTT 5 Receive Maximum (MAX_INFLIGHT, the broker holds the rest);
    once InfluxDB is fast again every accepted reading is stored exactly once, latest is the
    newest stored, and the gap report names exactly what InfluxDB lacks."""
    max_inflight, latency_s = 100, 0.4
    env = env_for(BridgeSettings, max_inflight=max_inflight)
    with running_stack(tmp_path, env=env) as stack:
        influx_port = int(stack.state["influx"]["url"].rsplit(":", 1)[1])
        bridge = stack.state["bridge"]["url"]
        with FaultProxy("127.0.0.1", influx_port) as proxy:
            try:
                slow_url = f"http://127.0.0.1:{proxy.port}"
                stack.set_env("bridge", env_for(BridgeSettings, influx={"url": slow_url}))
                stack.restart("bridge")

                def writes() -> tuple[float, float]:
                    m = stack.http_json(f"{bridge}/status")["metrics"]
                    prefix = "telemetry_bridge_write_seconds"
                    return m[f"{prefix}_sum"], m[f"{prefix}_count"]

                time.sleep(3)
                fast0 = writes()
                time.sleep(3)
                fast1 = writes()
                proxy.set(latency_s=latency_s)
                unacked: list[float] = []
                slow_until = time.monotonic() + 10
                while time.monotonic() < slow_until:
                    unacked.append(
                        bridge_metric(stack, bridge, "telemetry_bridge_unacked_messages")
                    )
                    time.sleep(0.25)
                slow1 = writes()
                proxy.set(latency_s=0)
                time.sleep(2)
                accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
                fast_n, slow_n = fast1[1] - fast0[1], slow1[1] - fast1[1]
                fast_mean = (fast1[0] - fast0[0]) / max(fast_n, 1)
                slow_mean = (slow1[0] - fast1[0]) / max(slow_n, 1)
                print(
                    f"writes: {fast_n:.0f} at {fast_mean * 1000:.0f} ms mean before, {slow_n:.0f} "
                    f"at {slow_mean * 1000:.0f} ms mean while slow; unacknowledged messages max "
                    f"{max(unacked):.0f} (Receive Maximum {max_inflight})"
                )
                assert_nothing_lost(accounts)
                assert_latest_is_newest_stored(stack)
                assert_gap_report_matches(stack, GATEWAYS, [bridge])
                assert slow_n >= 1, "no write completed while InfluxDB was slow"
                # Every write crosses the proxy at least twice (request, response).
                assert slow_mean >= latency_s, (fast_mean, slow_mean)
                assert fast_mean < slow_mean / 2, (fast_mean, slow_mean)
                version = mosquitto_version()
                if max(unacked) > max_inflight and version and version < (2, 0, 13):
                    pytest.xfail(
                        f"Mosquitto {'.'.join(map(str, version))} sent the bridge "
                        f"{max(unacked):.0f} unacknowledged messages with Receive Maximum "
                        f"{max_inflight}: before 2.0.13 each PUBACK releases up to Receive "
                        "Maximum queued messages (inflight quota fixes, eclipse/mosquitto#2306)"
                    )
                assert max(unacked) <= max_inflight, unacked
            finally:
                stack.down()  # while the proxy still forwards: the bridge's last write completes


# --- 2. one of two bridges killed --------------------------------------------------------------


def test_one_of_two_bridges_killed_survivor_continues_and_nothing_is_lost(tmp_path: Path) -> None:
    """Two bridges in one share group (client ids telemetry-bridge-1 and -2), both consuming; the
    second is SIGKILLed mid-stream and the survivor keeps storing. Mosquitto 2.0 keeps the dead
    bridge's persistent session and goes on giving it its round-robin share, so those readings
    wait in that session (PUBACKed to the gateways, stored nowhere yet) until the bridge comes
    back with the same client id: then every accepted reading is stored exactly once."""
    with running_stack(tmp_path) as stack:
        first = stack.state["bridge"]["url"]
        port = free_port()
        second = f"http://127.0.0.1:{port}"
        stack.add_service(
            "bridge-2",
            "bridge",
            env_for(BridgeSettings, client_id="telemetry-bridge-2", http_port=port),
            ready={"http": f"{second}/readyz", "status": 200},
        )
        time.sleep(3)
        msgs = "telemetry_bridge_messages_total"
        shares = [bridge_metric(stack, url, msgs) for url in (first, second)]
        assert all(n > 0 for n in shares), f"both bridges consume: {shares}"
        stack.kill("bridge-2")
        killed_at = [stack.account(gw) for gw in GATEWAYS]
        survivor_before = bridge_metric(stack, first, msgs)
        time.sleep(6)
        during = [stack.account(gw) for gw in GATEWAYS]
        survivor_after = bridge_metric(stack, first, msgs)
        accepted = sum(b.accepted - a.accepted for a, b in zip(killed_at, during, strict=True))
        waiting = sum(len(a.lost) for a in during)
        print(
            f"6 s with bridge-2 dead: {accepted} readings accepted, the survivor took "
            f"{survivor_after - survivor_before:.0f} messages; {waiting} readings PUBACKed to "
            "the gateways and stored nowhere yet (in bridge-2's session at the broker)"
        )
        assert survivor_after > survivor_before, "the survivor stopped consuming"
        log = Path(stack.state["services"]["bridge-2"]["log_file"])
        offset = log.stat().st_size
        stack.restart("bridge-2")
        accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
        assert "session present: True" in log.read_text()[offset:]
        assert_nothing_lost(accounts)
        assert_latest_is_newest_stored(stack)
        assert_gap_report_matches(stack, GATEWAYS, [first, second])


# --- 3. edge disk budget exhausted during an outage ------------------------------------------

#: Outbox budget (rows) and the readings fed before, during and after the outage.
BUDGET, BEFORE, OUTAGE, AFTER = 300, 60, 600, 60


def has_energy(seq: int) -> bool:
    """Every third input line has no energy_wh (the jsonl source gives line n seq n)."""
    return (seq - 1) % 3 != 2


def jsonl_line(gateway: str, seq: int, base: datetime) -> bytes:
    """The input line that becomes reading ``seq``: 4 chargers in turn, 10 ms apart."""
    values: dict[str, float] = {"power_w": 7000.0 + seq, "voltage_v": 230.0}
    if has_energy(seq):
        values["energy_wh"] = 10_000.0 + seq
    reading = {
        "charger_id": f"{gateway}-cp{seq % 4:03d}",
        "ts": (base + timedelta(milliseconds=10 * seq)).isoformat(),
        "status": "Charging",
        "values": values,
    }
    return orjson.dumps(reading) + b"\n"


def policy_violations(window: list[int], dropped: set[int]) -> list[str]:
    """What contradicts "non-energy readings dropped oldest first, then energy readings oldest
    first" among readings accepted in ``window`` while nothing could be sent."""
    problems = []
    for kind, energy in (("non-energy", False), ("energy", True)):
        seqs = [s for s in window if has_energy(s) is energy]
        gone = [s for s in seqs if s in dropped]
        if gone != seqs[: len(gone)]:
            problems.append(f"{kind} readings not dropped oldest first: {gone[:10]}...")
    energy_gone = [s for s in window if has_energy(s) and s in dropped]
    if energy_gone:
        kept = [s for s in window if not has_energy(s) and s not in dropped and s < energy_gone[-1]]
        if kept:
            problems.append(f"energy readings dropped while older non-energy stayed: {kept[:10]}")
    return problems


@contextlib.contextmanager
def budget_outage(
    tmp_path: Path, gw: str, *, slow_recovery: bool
) -> Iterator[tuple[SystemStack, dict[str, float]]]:
    """A jsonl gateway with a BUDGET-row outbox behind a FaultProxy: BEFORE readings are
    delivered, the link is cut (blackhole, connections reset) while OUTAGE readings arrive,
    then it comes back and AFTER readings arrive, and the input ends (the agent sends what is
    left and exits). Normal recovery: the AFTER readings come once the kept ones are stored.
    ``slow_recovery``: the link comes back slow (0.5 s per chunk) and the AFTER readings arrive
    while the first batch is in flight, with the outbox still at its budget. Yields the stack and
    the agent's last metrics."""
    base = datetime.now(UTC) - timedelta(minutes=2)
    with (
        running_stack(tmp_path, interval_s=0.2) as stack,
        FaultProxy("127.0.0.1", int(stack.state["mqtt"]["tls_port"])) as proxy,
    ):
        port = free_port()
        env = stack.agent_env(gw, proxy.port, outbox={"max_rows": BUDGET}, metrics_port=port)
        log = tmp_path / f"{gw}.log"
        agent = stack.start_agent(env, log, "--source", "jsonl", stdin=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}/metrics"
        fed = 0

        def feed(first: int, n: int, chunk: int = 30) -> None:
            nonlocal fed
            assert agent.stdin is not None
            for start in range(first, first + n, chunk):
                seqs = range(start, min(first + n, start + chunk))
                agent.stdin.write(b"".join(jsonl_line(gw, s, base) for s in seqs))
                agent.stdin.flush()
                fed = seqs[-1]
                time.sleep(0.05)

        def nothing_held() -> bool:
            """Every line fed is accepted (line n is seq n) and none is held any more."""
            if not stack.outbox(gw).exists():
                return False
            a = stack.account(gw)
            return a.accepted == fed and a.held == 0

        def depth() -> float:
            return scrape(url)["telemetry_edge_outbox_depth"]

        try:
            feed(1, BEFORE)
            wait_until("the first readings to be stored", nothing_held, 30)
            proxy.set(blackhole=True)
            proxy.reset_all()
            feed(BEFORE + 1, OUTAGE)
            wait_until("the outbox to hold its budget", lambda: depth() == BUDGET, 30)
            if slow_recovery:
                proxy.set(latency_s=0.5)
            proxy.reset_all()
            proxy.set(blackhole=False)
            if slow_recovery:
                connected = "telemetry_edge_mqtt_connected"
                wait_until("the agent to reconnect", lambda: scrape(url)[connected] == 1, 30)
                time.sleep(0.3)  # its first batch is on the way; it needs > 2 s at this speed
            else:
                wait_until("the kept readings to be stored", nothing_held, 30)
            feed(BEFORE + OUTAGE + 1, AFTER)
            wait_until("the last readings to be stored", nothing_held, 60)
            proxy.set(latency_s=0)
            metrics = scrape(url)
            assert agent.stdin is not None
            agent.stdin.close()  # the input ends: the agent sends what is left and exits
            assert agent.wait(60) == 0, log.read_text()[-2000:]
        finally:
            stop_process(agent)
        yield stack, metrics


def test_edge_budget_exhausted_during_outage_drops_by_policy_and_reports_it(
    tmp_path: Path,
) -> None:
    """A gateway with a 300-reading outbox loses its link while 600 readings arrive (every third
    without energy_wh). The budget drops all 200 non-energy readings first and then the 100
    oldest energy readings, counted by reason; after the link is back the 300 kept and the
    readings that follow are stored exactly once, accepted - stored = the dropped count, and
    the bridge's confirmed gaps name exactly the dropped seqs (the cloud learns of the drops
    only as seq gaps)."""
    gw = "gw-budget"
    with budget_outage(tmp_path, gw, slow_recovery=False) as (stack, m):
        *others, a = settle(stack, [*GATEWAYS, gw], gateway_services(len(GATEWAYS)))
        assert_nothing_lost(others)
        high, held, dropped_count = stack.held_seqs(gw)
        stored, _ = stack.stored_seqs(gw)
        dropped = set(range(1, high + 1)) - stored - held
        reasons = ("budget_non_energy", "budget_energy")
        by_reason = {r: m[f'{DROPPED_METRIC}{{reason="{r}"}}'] for r in reasons}
        print(f"dropped by reason (agent metrics): {by_reason}")
        window = list(range(BEFORE + 1, BEFORE + OUTAGE + 1))
        non_energy = [s for s in window if not has_energy(s)]
        energy = [s for s in window if has_energy(s)]
        over = OUTAGE - BUDGET
        expected = {*non_energy, *energy[: over - len(non_energy)]}
        assert (high, a.duplicates, len(held)) == (BEFORE + OUTAGE + AFTER, 0, 0), a.line()
        assert not policy_violations(window, dropped)
        assert dropped == expected
        assert by_reason == {
            "budget_non_energy": len(non_energy),
            "budget_energy": over - len(non_energy),
        }
        metric_total = sum(v for k, v in m.items() if k.startswith(f"{DROPPED_METRIC}{{"))
        assert metric_total == dropped_count == a.accepted - a.stored == len(dropped) == over
        # What is stored is what was fed (line n became seq n; energy_wh where it should be).
        rows = stack.influx(f"SELECT seq, energy_wh FROM readings WHERE gateway_id = '{gw}'")
        assert all((r[2] is not None) is has_energy(int(r[1])) for s in rows for r in s["values"])
        assert_latest_is_newest_stored(stack)
        gaps = assert_gap_report_matches(stack, [*GATEWAYS, gw], [stack.state["bridge"]["url"]])
        assert gaps[gw] == dropped


def test_edge_budget_drops_during_a_slow_recovery_are_counted_exactly(tmp_path: Path) -> None:
    """As above, but the link comes back slow and readings keep arriving while the first batch
    (the 300 kept readings) is in flight with the outbox still at its budget: the budget drops
    the 20 new non-energy readings and the 40 oldest pending energy readings, which are in that
    batch. Those 40 are delivered by its PUBACK, so they are not counted: the dropped count
    equals accepted - stored, and the seqs the outbox lists as dropped are exactly the ones
    InfluxDB lacks. Nothing is lost or stored twice, and the gap report names exactly what
    InfluxDB lacks."""
    gw = "gw-slowback"
    with budget_outage(tmp_path, gw, slow_recovery=True) as (stack, m):
        *others, a = settle(stack, [*GATEWAYS, gw], gateway_services(len(GATEWAYS)))
        assert_nothing_lost(others)
        high, held, dropped_count = stack.held_seqs(gw)
        stored, _ = stack.stored_seqs(gw)
        listed, in_flight, unlisted = stack.dropped_seqs(gw)
        unstored = set(range(1, high + 1)) - stored - held
        feed = range(BEFORE + 1, BEFORE + OUTAGE + AFTER + 1)
        # Everything the policy may have dropped: every non-energy reading fed while the
        # outbox was full, and the oldest energy readings of the outage (100 of them during
        # the outage, 40 more when the AFTER readings arrived).
        energy = [s for s in range(BEFORE + 1, BEFORE + OUTAGE + 1) if has_energy(s)]
        droppable = {s for s in feed if not has_energy(s)} | set(energy[:140])
        metric_total = sum(v for k, v in m.items() if k.startswith(f"{DROPPED_METRIC}{{"))
        print(
            f"dropped count {dropped_count} (metrics {metric_total:.0f}); accepted - stored "
            f"{a.accepted - a.stored}; dropped in flight and delivered {len(droppable & stored)} "
            f"(listed as dropped but stored {len(listed & stored)})"
        )
        assert (high, a.duplicates, len(held)) == (BEFORE + OUTAGE + AFTER, 0, 0), a.line()
        assert unstored <= droppable, sorted(unstored - droppable)[:10]
        gaps = assert_gap_report_matches(stack, [*GATEWAYS, gw], [stack.state["bridge"]["url"]])
        # A dropped reading newer than every stored one shows up once a newer one arrives.
        assert gaps[gw] == {s for s in unstored if s < max(stored)}
        assert_latest_is_newest_stored(stack)
        assert metric_total == dropped_count
        assert (in_flight, unlisted, a.overcounted, a.lost) == (set(), 0, [], []), a.line()
        assert listed == unstored
        assert dropped_count == a.accepted - a.stored == len(unstored)


# --- 4. long outage drained while live readings continue --------------------------------------


def backlog_left(stack: SystemStack, gateway: str, floor: int) -> int:
    """Readings with seq <= floor still in the outbox."""
    _, held, _ = stack.held_seqs(gateway)
    return sum(1 for s in held if s <= floor)


def newest_stored(stack: SystemStack, gateway: str) -> tuple[int, datetime]:
    """(seq, ts) of the gateway's newest stored reading (by ts)."""
    series = stack.influx(f"SELECT last(seq) FROM readings WHERE gateway_id = '{gateway}'")
    if not series:
        return 0, datetime.fromtimestamp(0, UTC)
    ts_ns, seq = series[0]["values"][0]
    return int(seq), datetime.fromtimestamp(ts_ns / 1e9, UTC)


def test_long_outage_backlog_drains_while_live_readings_flow(tmp_path: Path) -> None:
    """A gateway producing ~500 readings/s loses its link for 12 s (a backlog of thousands);
    after the link is back its backlog drains oldest first at DRAIN_RATE (800/s) while the live
    lane keeps flowing: throughout the drain, the newest reading InfluxDB holds for the gateway
    is at most 3 s old. Then nothing is lost and nothing is stored twice."""
    gw, drain_rate, max_lag_s = "gw-drain", 800, 3.0
    with (
        running_stack(tmp_path, interval_s=0.1) as stack,
        FaultProxy("127.0.0.1", int(stack.state["mqtt"]["tls_port"])) as proxy,
    ):
        env = stack.agent_env(
            gw, proxy.port, sim={"chargers": 10, "interval_s": 0.02}, drain_rate=drain_rate
        )
        agent = stack.start_agent(env, tmp_path / f"{gw}.log", "--source", "sim")
        #: (seconds since the restore, backlog readings left, age of the newest stored reading)
        samples: list[tuple[float, int, float]] = []
        try:
            time.sleep(3)
            proxy.set(blackhole=True)
            proxy.reset_all()
            time.sleep(12)
            floor, _, _ = stack.held_seqs(gw)  # readings up to here are the backlog
            proxy.reset_all()
            proxy.set(blackhole=False)
            restored = time.monotonic()
            while time.monotonic() < restored + 40:
                backlog = backlog_left(stack, gw, floor)
                newest_seq, newest_ts = newest_stored(stack, gw)
                if newest_seq > floor:  # the live lane is through
                    lag = (datetime.now(UTC) - newest_ts).total_seconds()
                    samples.append((time.monotonic() - restored, backlog, lag))
                if backlog == 0:
                    break
                time.sleep(0.5)
        finally:
            stop_process(agent)
        draining = [s for s in samples if s[1] > 0]
        nan = float("nan")
        print(
            f"backlog {floor} readings; first live reading stored "
            f"{samples[0][0] if samples else nan:.1f} s after the restore; {len(draining)} "
            f"samples during the drain, newest stored reading at most "
            f"{max((s[2] for s in draining), default=nan):.1f} s old; backlog drained "
            f"{samples[-1][0] if samples else nan:.1f} s after the restore"
        )
        accounts = settle(stack, [*GATEWAYS, gw], gateway_services(len(GATEWAYS)))
        assert floor >= 2000, "the outage did not build a backlog of thousands"
        assert len(draining) >= 3, f"the drain was not observed while live flowed: {samples}"
        assert all(lag <= max_lag_s for _, _, lag in draining), draining
        assert samples[-1][1] == 0, "the backlog did not drain in 40 s"
        assert_nothing_lost(accounts)
        assert_latest_is_newest_stored(stack)
        assert_gap_report_matches(stack, [*GATEWAYS, gw], [stack.state["bridge"]["url"]])
