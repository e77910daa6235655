"""Charging sessions end to end (issue 17, docs/design.md#sessions), on real servers.

1. OCPP: a charger driven by the ``ocpp`` library's own ChargePoint talks OCPP 1.6J to
   ``edge-agent run --source ocpp``, whose link to the broker goes through a FaultProxy; it runs
   three transactions on two connectors, and the link is cut in the middle of one (its rest,
   and the whole of another, wait in the outbox and drain later). Through the real bridge, the
   sessions job and the API: each session's energy is exactly meterStop - meterStart, it is
   ended with the stop reason sent, and the late readings make no second session.
2. Simulated gateways through the whole stack (``telemetry-stack up``) with two bridges in the
   share group, plus a gateway whose simulated hours arrive out of order: every session the job
   computed (API, JSON and CSV) equals the one a plain reference implementation in the test
   (tests/support/sessions_check.py) computes from the raw readings InfluxDB holds.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from edge_agent.capture import Capture
from edge_agent.ocpp.lib import call
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Simulator
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port, port_open
from tests.support.delivery_checks import assert_nothing_lost, settle
from tests.support.fault_proxy import FaultProxy
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.ocpp_peer import charge_point
from tests.support.processes import BIN, Procs, client_settings, start_api, start_bridge
from tests.support.sessions_check import (
    Rules,
    api_sessions,
    api_sessions_csv,
    differences,
    keyed,
    raw_readings,
    reference_sessions,
    sessions_env,
    stored_sessions,
)
from tests.support.system_stack import FAST_GAPS_ENV, SystemStack, gateway_services, stop_process
from tests.support.waiting import poll, wait_until

READ_KEY = "r" * 32
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def sv(value: str, measurand: str, unit: str) -> dict[str, str]:
    return {"value": value, "measurand": measurand, "unit": unit}


def meter(ts: str, wh: int, w: int) -> list[dict[str, Any]]:
    """One meterValue: the energy register and the power."""
    return [
        {
            "timestamp": ts,
            "sampledValue": [
                sv(str(wh), "Energy.Active.Import.Register", "Wh"),
                sv(str(w), "Power.Active.Import", "W"),
            ],
        }
    ]


def get(api: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{api}{path}", params=params, headers={"X-API-Key": READ_KEY}, timeout=10)


def charger_sessions(api: str, charger: str) -> list[dict[str, Any]]:
    """The charger's sessions of the last two days as the API lists them."""
    return api_sessions(api, READ_KEY, f"/v1/chargers/{charger}/sessions", {"start": "-2d"})


# --- 1. OCPP: three transactions, the link cut in the middle of one ------------------------

#: (connector, idTag, meterStart, meterStop, stop reason) of the three transactions, in order.
TX_A = (1, "TAG-ALICE", 1_000, 2_400, "EVDisconnected")
TX_B = (2, "TAG-BOB", 50_000, 53_700, "Remote")
TX_C = (1, "TAG-CAROL", 2_400, 3_900, "Local")


@pytest.mark.integration
@pytest.mark.parametrize("age", ["minutes", "hours"])
async def test_ocpp_sessions_across_a_cut_link_are_exact_and_single(
    age: str, broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """Transaction A on connector 1; B on connector 2 is cut in half by the gateway's link
    going dead (blackholed, connections reset); C on connector 1 runs wholly while the link is
    dead, and B stops then too. The sessions job runs every second throughout: during the cut it
    shows B with what was stored before it; once the link is back and the backlog drained,
    every session's energy is exactly meterStop - meterStart, each ended by its stop with the
    reason sent, B is still one session, and there are exactly three. ``hours``: the charger's
    clock is three hours back, so the whole backlog is stored more than LATE_AFTER_S late (the
    bridges' late marks lead the job to it); ``minutes``: three minutes back, so the job's
    LOOKBACK sweep finds the backlog (LOOKBACK_EVERY 5 s here)."""
    gateway = f"gw-tx-{uuid.uuid4().hex[:6]}"
    charger = f"CP-{uuid.uuid4().hex[:6]}"
    t0 = datetime.now(UTC).replace(microsecond=0) - (
        timedelta(hours=3) if age == "hours" else timedelta(minutes=3)
    )

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    start_bridge(procs, broker, influx_db)
    api = start_api(procs, influx_db, READ_KEY, broker=broker)
    procs.start(
        "sessions",
        [sys.executable, "-m", "sessions"],
        sessions_env(
            influx_db.url,
            influx_db.database,
            silence="6h",
            # Readings stored late but less than LATE_AFTER_S late are found by the LOOKBACK
            # sweep, every LOOKBACK_EVERY (10 min by default): every 5 s here.
            **({"lookback_every": "5s"} if age == "minutes" else {}),
        ),
    )
    with FaultProxy(broker.host, broker.tls_port) as proxy:
        port = free_port()
        mqtt = client_settings(broker, gateway)
        mqtt["mqtt"] |= {"port": proxy.port, "keepalive_s": 5}
        env = env_for(
            EdgeSettings,
            **mqtt,
            gateway_id=gateway,
            outbox_path=tmp_path / "outbox.sqlite3",
            reconnect_max_s=2,
            ocpp={"port": port, "state_path": tmp_path / "ocpp-state.json"},
        )
        edge = procs.start("edge-ocpp", [str(BIN / "edge-agent"), "run", "--source", "ocpp"], env)
        edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)

        def stored(where: str = "") -> int:
            rows = raw_readings(
                influx_db.url, influx_db.database, f"charger_id = '{charger}'" + where
            )
            return len(rows)

        async with asyncio.timeout(240), charge_point(port, charger) as cp:
            await cp.call(
                call.BootNotification(
                    charge_point_model="AC-22", charge_point_vendor="Acme",
                    charge_point_serial_number="SN-42", charge_box_serial_number="SN-42",
                    firmware_version="1.2.3",
                )
            )  # fmt: skip
            # A, on connector 1, whole.
            a = await cp.call(call.StartTransaction(1, TX_A[1], TX_A[2], at(10)))
            await cp.call(call.StatusNotification(1, "NoError", "Charging", timestamp=at(11)))
            await cp.call(call.MeterValues(1, meter(at(20), 1_700, 7_000), a.transaction_id))
            await cp.call(call.MeterValues(1, meter(at(30), 2_200, 7_400), a.transaction_id))
            await cp.call(call.StopTransaction(TX_A[3], at(40), a.transaction_id, reason=TX_A[4]))
            await cp.call(call.StatusNotification(1, "NoError", "Available", timestamp=at(45)))
            # B, on connector 2: its start and first meter value go through ...
            b = await cp.call(call.StartTransaction(2, TX_B[1], TX_B[2], at(60)))
            await cp.call(call.MeterValues(2, meter(at(70), 51_000, 11_000), b.transaction_id))
            b_tx = str(b.transaction_id)
            await asyncio.to_thread(
                wait_until, "B's first half stored",
                lambda: stored(f" AND transaction_id = '{b_tx}'") >= 2, 60,
            )  # fmt: skip

            def b_so_far() -> dict[str, Any] | None:
                found = [s for s in charger_sessions(api, charger) if s["transaction_id"] == b_tx]
                return found[0] if found else None

            await asyncio.to_thread(
                wait_until, "the job to show B's first half", lambda: b_so_far() is not None, 60
            )
            first_half = b_so_far()
            assert first_half is not None
            assert first_half["meter_start_wh"] == TX_B[2]
            assert first_half["energy_wh"] == 51_000 - TX_B[2], first_half
            if age == "minutes":
                assert first_half["state"] == "active", first_half
            # ... then the link dies: the rest of B and all of C wait in the outbox.
            proxy.set(blackhole=True)
            proxy.reset_all()
            await cp.call(call.MeterValues(2, meter(at(80), 52_500, 11_000), b.transaction_id))
            c = await cp.call(call.StartTransaction(1, TX_C[1], TX_C[2], at(85)))
            await cp.call(call.MeterValues(2, meter(at(90), 53_000, 10_500), b.transaction_id))
            await cp.call(call.MeterValues(1, meter(at(95), 3_100, 7_200), c.transaction_id))
            await cp.call(call.StopTransaction(TX_C[3], at(100), c.transaction_id, reason=TX_C[4]))
            await cp.call(call.StopTransaction(TX_B[3], at(110), b.transaction_id, reason=TX_B[4]))
            await cp.call(call.StatusNotification(2, "NoError", "Available", timestamp=at(115)))
            # Three passes of the job while the link is dead: still B's first half, one of it.
            await asyncio.sleep(3.5)
            b_stored = stored(f" AND transaction_id = '{b_tx}'")
            assert b_stored == 2, "readings got through the dead link"
            during = [s for s in charger_sessions(api, charger) if s["transaction_id"] == b_tx]
            assert len(during) == 1, during
            assert during[0]["energy_wh"] == 51_000 - TX_B[2], during
            # The charger's page: connector 2 charging in B, with its energy so far.
            page = get(api, f"/v1/chargers/{charger}").json()
            connectors = {c["connector_id"]: c for c in page["connectors"]}
            active = connectors[2]["session"]
            assert active is not None, page
            assert (active["transaction_id"], active["energy_wh"]) == (b_tx, 1_000.0), page
            assert connectors[1]["session"] is None, page
            proxy.reset_all()
            proxy.set(blackhole=False)
        tx_ids = {str(a.transaction_id): TX_A, b_tx: TX_B, str(c.transaction_id): TX_C}
        assert len(tx_ids) == 3, "the edge gave two transactions one id"

        def settled() -> bool:
            got = charger_sessions(api, charger)
            return len(got) >= 3 and all(
                s["state"] == "ended" and s["transaction_id"] in tx_ids
                and s["meter_stop_wh"] == tx_ids[s["transaction_id"]][3]
                for s in got
            )  # fmt: skip

        await asyncio.to_thread(wait_until, "the backlog drained and the job ran", settled, 120)
        await asyncio.sleep(2.5)  # two more passes: nothing may change or appear
        listed = charger_sessions(api, charger)
        edge.stop(timeout=10)  # before its link (the proxy) goes

    assert sorted(s["transaction_id"] for s in listed) == sorted(tx_ids), listed
    readings = raw_readings(influx_db.url, influx_db.database, f"charger_id = '{charger}'")
    hashes = set()
    for s in listed:
        connector, _tag, start_wh, stop_wh, reason = tx_ids[s["transaction_id"]]
        tx = s["transaction_id"]
        assert (s["charger_id"], s["gateway_id"]) == (charger, gateway), s
        assert (s["evse_id"], s["connector_id"]) == (connector, connector), s
        assert (s["state"], s["end_cause"], s["stop_reason"]) == ("ended", "stop", reason), s
        assert (s["meter_start_wh"], s["meter_stop_wh"]) == (start_wh, stop_wh), s
        assert s["energy_wh"] == stop_wh - start_wh, s
        assert s["flags"] == [], s
        assert s["readings"] == sum(1 for r in readings if r.get("transaction_id") == tx), s
        assert HEX32.match(s["id_tag_hash"]), s
        hashes.add(s["id_tag_hash"])
        one = get(api, f"/v1/sessions/{tx}", charger_id=charger)
        assert one.status_code == 200, one.text
        detail = one.json()
        assert {k: detail[k] for k in s} == s, detail
        curve = [p["power_w"] for p in detail["power"] if p["power_w"] is not None]
        assert curve, f"no power curve: {detail['power']}"
        assert all(7_000 <= p <= 11_000 for p in curve), detail["power"]
    assert len(hashes) == 3, "three id tags, three hashes"
    by_tx = {s["transaction_id"]: s for s in listed}
    b_session = by_tx[b_tx]
    assert b_session["started_at"] == at(60).replace("Z", ".000Z")
    assert b_session["ended_at"] == at(110).replace("Z", ".000Z")
    assert b_session["duration_s"] == 50.0
    assert b_session["max_power_w"] == 11_000.0
    # Exactly three points in keep.sessions that readers count (the rest superseded), and the
    # id tags themselves nowhere in storage.
    kept = [
        p
        for p in stored_sessions(influx_db.url, influx_db.database)
        if p["charger_id"] == charger and p["state"] != "superseded"
    ]
    assert sorted(p["transaction_id"] for p in kept) == sorted(tx_ids), kept
    dump = orjson.dumps(readings + kept).decode()
    assert not any(tag in dump for tag in (TX_A[1], TX_B[1], TX_C[1])), "an id tag was stored"
    # The fleet-wide export lists the same three.
    exported = api_sessions(api, READ_KEY, "/v1/sessions", {"start": "-2d"})
    assert sorted(s["transaction_id"] for s in exported if s["charger_id"] == charger) == sorted(
        tx_ids
    )
    # The registry knows what BootNotification said; no connector has an active session.
    info = get(api, f"/v1/chargers/{charger}").json()
    assert all(c["session"] is None for c in info["connectors"]), info
    assert (info["vendor"], info["model"], info["serial"], info["firmware"]) == (
        "Acme", "AC-22", "SN-42", "1.2.3",
    ), info  # fmt: skip


# --- 2. simulated gateways, two bridges: the job against a reference implementation ---------

#: SILENCE of the stack's sessions job: a session without a stop ends this long after its
#: newest reading; short, so every session of the run is ended soon after the gateways stop.
SILENCE_S = 15
#: The history gateway's readings end this long ago: all of them are stored more than
#: LATE_AFTER_S late, so the bridges mark them and the job's passes take them from the marks
#: (readings less late than that are found by its LOOKBACK sweep, every LOOKBACK_EVERY).
HISTORY_END = timedelta(hours=2)
HISTORY_GATEWAY = "gw-hist"
HISTORY_CHARGERS = 6
HISTORY_STEP_S = 5.0


def history_halves(gateway: str, end: datetime, hours: float) -> tuple[list[bytes], list[bytes]]:
    """``hours`` of the simulator's chargers at a simulated step of HISTORY_STEP_S, ending at
    ``end``, as jsonl input lines: (the later half, the earlier half). The last charger's
    readings carry their transaction but no ``tx_event`` (a source that does not say when a
    transaction starts or stops): its sessions end by the next one (``next``)."""
    sim = Simulator(gateway, HISTORY_CHARGERS, seed=17)
    steps = int(hours * 3600 / HISTORY_STEP_S)
    start = end - timedelta(seconds=steps * HISTORY_STEP_S)
    lines = []
    quiet = sim.charger_ids[-1]
    for k in range(steps):
        for capture in sim.sample(start + timedelta(seconds=k * HISTORY_STEP_S), HISTORY_STEP_S):
            lines.append(jsonl_line(capture, with_events=capture.charger_id != quiet))
    half = len(lines) // 2
    return lines[half:], lines[:half]


def exited(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is not None


def send_history(stack: SystemStack, tmp_path: Path, parts: tuple[list[bytes], ...]) -> None:
    """Each part through an edge agent of HISTORY_GATEWAY (jsonl) with a new outbox: a new
    epoch whose seqs start from 1 again (within an epoch, seqs follow the readings' ts, as the
    bridges' gap tracking assumes)."""
    env = stack.agent_env(HISTORY_GATEWAY, int(stack.state["mqtt"]["tls_port"]))
    for n, lines in enumerate(parts):
        for old in stack.outbox(HISTORY_GATEWAY).parent.glob(f"{HISTORY_GATEWAY}.sqlite3*"):
            old.unlink()
        source = tmp_path / f"history-{n}.jsonl"
        source.write_bytes(b"".join(lines))
        log = tmp_path / f"history-{n}.log"
        agent = stack.start_agent(env, log, "--source", "jsonl", "--file", str(source))
        try:
            wait_until(f"history part {n} sent", exited(agent), 180)
        finally:
            stop_process(agent)
        assert agent.returncode == 0, log.read_text()[-2000:]


def jsonl_line(capture: Capture, *, with_events: bool = True) -> bytes:
    """A capture as the jsonl source reads it (every field it has that is set; without
    ``with_events``, not its ``tx_event``, ``stop_reason`` and ``id_tag_hash``)."""
    out: dict[str, Any] = {}
    for f in fields(capture):
        value = getattr(capture, f.name)
        if value is None:
            continue
        if not with_events and f.name in ("tx_event", "stop_reason", "id_tag_hash"):
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif hasattr(value, "model_dump"):  # a pydantic model (charger_info)
            value = value.model_dump(exclude_none=True)
        out[f.name] = value
    return orjson.dumps(out) + b"\n"


@pytest.mark.system
def test_sessions_of_simulated_gateways_through_two_bridges_match_a_reference(
    tmp_path: Path,
) -> None:
    """``telemetry-stack up`` with two simulated gateways (a reading every 0.1 s from each of 4
    chargers), a second bridge added to the share group, and a third gateway (jsonl) sending six
    hours of the simulator's chargers at a 5 s step, the later three hours before the earlier
    (each from an outbox of its own): many whole sessions, stopped or ended by the next one,
    sent out of order and stored hours late (a session across the halves gets its start after
    its end), spread over both bridges. After the gateways stop, everything is stored and
    SILENCE passed, every session the job wrote (API JSON pages, CSV export, and keep.sessions)
    equals the reference computed from the raw readings."""
    env = {**FAST_GAPS_ENV, **sessions_stack_env()}
    with SystemStack(tmp_path / "stack", env).running(2, 4, 0.1) as stack:
        port = free_port()
        second = f"http://127.0.0.1:{port}"
        stack.add_service(
            "bridge-2",
            "bridge",
            env_for(BridgeSettings, client_id="telemetry-bridge-2", http_port=port),
            ready={"http": f"{second}/readyz", "status": 200},
        )
        end = datetime.now(UTC).replace(microsecond=0) - HISTORY_END
        later, earlier = history_halves(HISTORY_GATEWAY, end, 6.0)
        send_history(stack, tmp_path, (later, earlier))
        time.sleep(10)  # the live gateways go on: sessions in progress, both bridges busy
        taken = [
            float(stack.http_json(f"{url}/status")["metrics"].get(
                "telemetry_bridge_messages_total", 0.0
            ))
            for url in (stack.state["bridge"]["url"], second)
        ]  # fmt: skip
        assert all(n > 0 for n in taken), f"both bridges consume: {taken}"
        assert_nothing_lost(settle(stack, ["gw-1", "gw-2"], gateway_services(2)))
        stopped_at = time.time()
        q = f"SELECT count(seq) FROM readings WHERE gateway_id = '{HISTORY_GATEWAY}'"

        def history_stored() -> int:
            series = stack.influx(q)
            return int(series[0]["values"][0][1]) if series else 0

        total = len(later) + len(earlier)
        wait_until("the whole history stored", lambda: history_stored() == total, 60)

        influx_url, db = stack.state["influx"]["url"], stack.state["influx"]["database"]
        api, key = stack.state["api"]["url"], stack.state["api"]["keys"]["read"]
        window = {"start": "-1d"}

        def compare() -> list[str]:
            readings = raw_readings(influx_url, db)
            want = keyed(reference_sessions(readings, Rules(SILENCE_S, time.time_ns())))
            got = keyed(api_sessions(api, key, "/v1/sessions", window))
            return differences(got, want)

        # Every session ends by SILENCE after the gateways stopped; the job then writes it.
        time.sleep(max(0.0, stopped_at + SILENCE_S - time.time()))
        poll(lambda: not compare(), 60, interval=1.0)
        readings = raw_readings(influx_url, db)
        want = keyed(reference_sessions(readings, Rules(SILENCE_S, time.time_ns())))
        got = keyed(api_sessions(api, key, "/v1/sessions", window))
        assert not differences(got, want), "\n".join(differences(got, want))

        causes = [s["end_cause"] for s in want.values()]
        print(
            f"{len(readings):,} readings, {len(want)} sessions: "
            f"{causes.count('next')} ended by the next, {causes.count('silence')} by silence, "
            f"{causes.count('stop')} by a stop"
        )
        hist = [s for s in want.values() if s["gateway_id"] == HISTORY_GATEWAY]
        assert sum(s["end_cause"] == "stop" for s in hist) >= 10, "too few stopped sessions"
        assert sum(s["end_cause"] == "next" for s in hist) >= 3, "too few ended by the next"
        assert any(s["gateway_id"] in ("gw-1", "gw-2") for s in want.values()), "no live session"
        assert all(s["state"] == "ended" for s in want.values())

        # The same sessions in the CSV export, and in keep.sessions (superseded points aside).
        rows = api_sessions_csv(api, key, window)
        assert {(r["charger_id"], r["transaction_id"]) for r in rows} == set(want)
        for r in rows:
            s = want[(r["charger_id"], r["transaction_id"])]
            assert float(r["energy_wh"]) == s["energy_wh"], (r, s)
            assert (r["state"], r["end_cause"]) == (s["state"], s["end_cause"]), (r, s)
            assert sorted(filter(None, r["flags"].split(";"))) == s["flags"], (r, s)
        kept = [p for p in stored_sessions(influx_url, db) if p["state"] != "superseded"]
        assert sorted((p["charger_id"], p["transaction_id"]) for p in kept) == sorted(want)


def sessions_stack_env() -> dict[str, str]:
    """The sessions job of ``telemetry-stack up``: a pass a second, SILENCE_S."""
    from sessions.settings import SessionsSettings

    return env_for(SessionsSettings, interval_s=1.0, silence=f"{SILENCE_S}s")
