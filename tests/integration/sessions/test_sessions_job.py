"""The sessions job against a real InfluxDB 1.x (docs/design.md#sessions): readings written as
the bridge writes them (processor/lineproto.py), passes run with a clock of the test's own,
the stored session points read back. In order, out of order and late (with the bridges' late
mark), replayed: the same sessions; an open session ends by silence or by the connector's next
reading; a start that moves earlier supersedes the old point; an ended session is computed
again when a reading arrives late."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from processor.lineproto import to_lines, ts_ns, ts_ns_all
from processor.outputs.late import late_lines
from sessions.job import SessionJob
from sessions.settings import SessionsInfluxSettings, SessionsSettings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer
from telemetry_common.schema import Reading
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port
from tests.support.fixtures import InfluxTarget
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

GW = "gw-1"
EPOCH = "00000000000000aa"
TAG = "0123456789abcdef0123456789abcdef"
#: Fields that depend on when a pass ran, not on the readings.
VOLATILE = {"computed_at"}


def _q(db: InfluxTarget, statement: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{db.url}/query",
        data={"db": db.database, "q": statement, "epoch": "ns"},
        timeout=30,
    )
    r.raise_for_status()
    out = []
    for result in r.json()["results"]:
        assert "error" not in result, result
        for s in result.get("series", []):
            out += [dict(zip(s["columns"], v, strict=True)) for v in s["values"]]
    return out


def _write(db: InfluxTarget, lines: Sequence[str], rp: str | None = None) -> None:
    params = {"db": db.database, "precision": "ns", **({"rp": rp} if rp else {})}
    r = httpx.post(f"{db.url}/write", params=params, content="\n".join(lines), timeout=30)
    assert r.status_code == 204, r.text


def _keep(db: InfluxTarget) -> None:
    _q(db, f'CREATE RETENTION POLICY "keep" ON "{db.database}" DURATION INF REPLICATION 1')


def _store(db: InfluxTarget, readings: Sequence[Reading], gateway: str = GW) -> None:
    rows = [r.model_dump() for r in readings]
    _write(db, to_lines(gateway, rows, ts_ns_all(rows), epoch=EPOCH))


def _sessions(
    db: InfluxTarget, *, superseded: bool = False
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored session points by (charger, transaction), without the volatile fields."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in _q(db, f'SELECT * FROM "{db.database}"."keep"."sessions"'):
        if (row["state"] == "superseded") != superseded:
            continue
        key = (row["charger_id"], row["transaction_id"])
        assert key not in out, f"two points of {key}"
        out[key] = {k: v for k, v in row.items() if k not in VOLATILE}
    return out


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def _job(
    db: InfluxTarget, clock: Callable[[], datetime], **more: Any
) -> AsyncIterator[SessionJob]:
    settings = SessionsSettings(
        influx=SessionsInfluxSettings(url=db.url, database=db.database),
        http_port=0,
        **more,
    )
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        yield SessionJob(settings, client, writer, now=clock)


def _transactions(t0: datetime) -> list[Reading]:
    """CP-1: an OCPP transaction on connector 1 (meterStart, MeterValues, meterStop and a
    Transaction.End MeterValues after it), then the connector Available; CP-2: a transaction
    without start or stop events on connector 2 (its register, power), still running."""

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    cp1 = [
        Reading(
            charger_id="CP-1",
            evse_id=1,
            connector_id=1,
            seq=1,
            ts=at(0),
            status="Charging",
            transaction_id="7001",
            tx_event="started",
            id_tag_hash=TAG,
            values={"energy_wh": 120_000.4},
        ),
        *[
            Reading(
                charger_id="CP-1",
                evse_id=1,
                connector_id=1,
                seq=1 + i,
                ts=at(60 * i),
                status="Charging",
                transaction_id="7001",
                values={"energy_wh": 120_000.4 + 110.1 * i, "power_w": 6600.0 + i},
            )
            for i in range(1, 10)
        ],
        Reading(
            charger_id="CP-1",
            evse_id=1,
            connector_id=1,
            seq=11,
            ts=at(600),
            status="Finishing",
            transaction_id="7001",
            tx_event="ended",
            stop_reason="EVDisconnected",
            values={"energy_wh": 121_101.7},
        ),
        Reading(
            charger_id="CP-1",
            evse_id=1,
            connector_id=1,
            seq=12,
            ts=at(600.001),
            status="Finishing",
            transaction_id="7001",
            values={"energy_wh": 121_101.9},
        ),
        Reading(
            charger_id="CP-1",
            evse_id=1,
            connector_id=1,
            seq=13,
            ts=at(660),
            status="Available",
            values={"energy_wh": 121_101.9},
        ),
    ]
    cp2 = [
        Reading(
            charger_id="CP-2",
            evse_id=1,
            connector_id=2,
            seq=100 + i,
            ts=at(30 * i),
            status="Charging",
            transaction_id="sim-42",
            values={"energy_wh": 5_000.0 + 50.0 * i, "power_w": 11_000.0 - i},
        )
        for i in range(20)
    ]
    return cp1 + cp2


def _expected_ocpp(t0: datetime) -> dict[str, Any]:
    return {
        "charger_id": "CP-1",
        "gateway_id": GW,
        "evse_id": "1",
        "connector_id": "1",
        "transaction_id": "7001",
        "state": "ended",
        "end_cause": "stop",
        "time": ts_ns(t0),
        "ended_at": ts_ns(t0 + timedelta(seconds=600)),
        "meter_start_wh": 120_000.4,
        "meter_stop_wh": 121_101.7,
        "energy_wh": 1_101.3,  # 121,101.7 - 120,000.4 in decimal, not the floats' 1101.300000000003
        "max_power_w": 6609.0,
        "duration_s": 600.0,
        "stop_reason": "EVDisconnected",
        "id_tag_hash": TAG,
        "readings": 12,
        "flags": "",
        "first_seq": 1,
        "last_seq": 12,
        "last_reading_at": ts_ns(t0 + timedelta(seconds=600.001)),
    }


async def test_in_order_sessions(influx_db: InfluxTarget) -> None:
    """Readings of the last hour, one pass (its first: the whole LOOKBACK): the OCPP session
    ended by its stop with energy = meterStop - meterStart exactly, the other still active."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    _store(influx_db, _transactions(t0))
    clock = Clock(t0 + timedelta(minutes=40))
    async with _job(influx_db, clock) as job:
        result = await job.run_pass()
    assert result.written == {"active": 1, "ended": 1, "superseded": 0}
    stored = _sessions(influx_db)
    assert stored[("CP-1", "7001")] == _expected_ocpp(t0)
    sim = stored[("CP-2", "sim-42")]
    assert sim["state"] == "active"
    assert sim["end_cause"] == ""
    assert "ended_at" not in sim or sim["ended_at"] is None
    assert (sim["meter_start_wh"], sim["meter_stop_wh"], sim["energy_wh"]) == (
        5000.0,
        5950.0,
        950.0,
    )
    assert (sim["readings"], sim["first_seq"], sim["last_seq"]) == (20, 100, 119)
    assert sim["duration_s"] == 570.0
    assert sim["id_tag_hash"] == ""
    assert sim["stop_reason"] == ""
    # The progress is stored.
    state = _q(influx_db, f'SELECT * FROM "{influx_db.database}"."keep"."session_state"')
    assert state[-1]["scanned_until_ns"] == ts_ns(clock.now)


async def test_out_of_order_and_late_give_the_same_sessions(influx_db: InfluxTarget) -> None:
    """The second half of the readings first (stored in time), the first half two hours later
    (a drained backlog: more than an hour late, so the bridge marked it): the sessions equal
    those of the readings in order; the session first stored from its second half is
    superseded (its start moved earlier). Replaying everything changes nothing."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    readings = _transactions(t0)
    ordered = sorted(readings, key=lambda r: r.ts)
    cut = len(ordered) // 2
    first_half, second_half = ordered[:cut], ordered[cut:]
    clock = Clock(t0 + timedelta(minutes=40))
    async with _job(influx_db, clock, silence="1d") as job:
        _store(influx_db, list(reversed(second_half)))
        await job.run_pass()
        early = _sessions(influx_db)
        assert early[("CP-1", "7001")]["time"] > ts_ns(t0)

        clock.now += timedelta(hours=2)
        _store(influx_db, first_half)
        nss = [ts_ns(r.ts) for r in first_half]
        _write(influx_db, late_lines([(GW, nss)], ts_ns(clock.now), bridge="b-1"))
        result = await job.run_pass()
        assert result.marks == 1
        late = _sessions(influx_db)

        # Replayed: every reading again, then a pass of the LOOKBACK and one of the mark.
        _store(influx_db, readings)
        _write(influx_db, late_lines([(GW, nss)], ts_ns(clock.now) + 1, bridge="b-2"))
        clock.now += timedelta(minutes=11)
        await job.run_pass()
        replayed = _sessions(influx_db)

    # The reference: the same readings in order into a database of their own, one pass.
    ref_db = InfluxTarget(url=influx_db.url, database=influx_db.database + "_ref")
    _q(ref_db, f'CREATE DATABASE "{ref_db.database}"')
    try:
        _keep(ref_db)
        _store(ref_db, ordered)
        async with _job(ref_db, Clock(t0 + timedelta(minutes=40)), silence="1d") as job:
            await job.run_pass()
        reference = _sessions(ref_db)
    finally:
        _q(ref_db, f'DROP DATABASE "{ref_db.database}"')

    assert reference[("CP-1", "7001")] == _expected_ocpp(t0)
    # CP-2 is still open; its duration and counts do not depend on the clock.
    assert late == reference
    assert replayed == reference
    superseded = _sessions(influx_db, superseded=True)
    assert set(superseded) == {("CP-1", "7001"), ("CP-2", "sim-42")}
    for key, old in superseded.items():
        assert old["time"] == early[key]["time"] > reference[key]["time"]


async def test_an_open_session_ends_by_silence_or_by_the_next_reading(
    influx_db: InfluxTarget,
) -> None:
    """No stop: a session stays active until its connector has a newer reading of no
    transaction (``next``), or until SILENCE passed since its newest reading (``silence``),
    with no new reading needed to end it."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)

    def tx(charger: str, t: str, n: int) -> list[Reading]:
        return [
            Reading(
                charger_id=charger,
                evse_id=1,
                connector_id=1,
                seq=i + 1,
                ts=t0 + timedelta(seconds=10 * i),
                transaction_id=t,
                values={"energy_wh": 10.0 * i},
            )
            for i in range(n)
        ]

    _store(influx_db, tx("CP-S", "s-1", 5) + tx("CP-N", "n-1", 5))
    clock = Clock(t0 + timedelta(minutes=30))
    async with _job(influx_db, clock, silence="2h") as job:
        await job.run_pass()
        assert {k: v["state"] for k, v in _sessions(influx_db).items()} == {
            ("CP-S", "s-1"): "active",
            ("CP-N", "n-1"): "active",
        }
        # CP-N's connector says Available, with no transaction: its session ended at its
        # newest reading.
        _store(
            influx_db,
            [
                Reading(
                    charger_id="CP-N",
                    evse_id=1,
                    connector_id=1,
                    seq=99,
                    ts=t0 + timedelta(minutes=5),
                    status="Available",
                    values={"energy_wh": 40.0},
                )
            ],
        )
        clock.now += timedelta(minutes=1)
        await job.run_pass()
        n = _sessions(influx_db)[("CP-N", "n-1")]
        assert (n["state"], n["end_cause"], n["ended_at"]) == (
            "ended",
            "next",
            ts_ns(t0 + timedelta(seconds=40)),
        )
        assert _sessions(influx_db)[("CP-S", "s-1")]["state"] == "active"

        clock.now = t0 + timedelta(seconds=40) + timedelta(hours=2)
        result = await job.run_pass()
        assert result.written["ended"] == 1
        s = _sessions(influx_db)[("CP-S", "s-1")]
        assert (s["state"], s["end_cause"], s["ended_at"], s["duration_s"]) == (
            "ended",
            "silence",
            ts_ns(t0 + timedelta(seconds=40)),
            40.0,
        )
        assert s["energy_wh"] == 40.0


async def test_a_start_found_late_within_lookback_supersedes_the_old_point(
    influx_db: InfluxTarget,
) -> None:
    """Readings stored less than an hour late (no mark) are found by the LOOKBACK sweep: the
    session's start moves earlier, it is written at its new time and the old point is written
    again as ``superseded``."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
    readings = [
        Reading(
            charger_id="CP-L",
            evse_id=1,
            connector_id=1,
            seq=i + 1,
            ts=t0 + timedelta(minutes=i),
            transaction_id="l-1",
            tx_event="started" if i == 0 else None,
            values={"energy_wh": 100.0 * i},
        )
        for i in range(10)
    ]
    clock = Clock(t0 + timedelta(minutes=20))
    async with _job(influx_db, clock, lookback_every="10m") as job:
        _store(influx_db, readings[5:])
        await job.run_pass()
        assert _sessions(influx_db)[("CP-L", "l-1")]["time"] == ts_ns(readings[5].ts)
        _store(influx_db, readings[:5])
        clock.now += timedelta(minutes=1)
        await job.run_pass()  # no sweep yet: the late readings lie behind OVERLAP
        assert _sessions(influx_db)[("CP-L", "l-1")]["time"] == ts_ns(readings[5].ts)
        clock.now += timedelta(minutes=10)
        result = await job.run_pass()
    assert result.written["superseded"] == 1
    now = _sessions(influx_db)[("CP-L", "l-1")]
    assert (now["time"], now["meter_start_wh"], now["energy_wh"], now["readings"]) == (
        ts_ns(t0),
        0.0,
        900.0,
        10,
    )
    old = _sessions(influx_db, superseded=True)[("CP-L", "l-1")]
    assert (old["time"], old["readings"]) == (ts_ns(readings[5].ts), 5)


async def test_an_ended_session_is_computed_again_when_a_reading_arrives_late(
    influx_db: InfluxTarget,
) -> None:
    """An ended session, long out of the look back; a MeterValues of it (higher power, its
    seq was missing) is stored days later with the bridge's late mark: the session is
    recomputed with it, and only it."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    readings = [
        Reading(
            charger_id="CP-E",
            evse_id=1,
            connector_id=1,
            seq=s,
            ts=t0 + timedelta(minutes=m),
            transaction_id="e-1",
            tx_event=ev,  # type: ignore[arg-type]
            values=v,
        )
        for s, m, ev, v in (
            (1, 0, "started", {"energy_wh": 1000.0}),
            (2, 1, None, {"energy_wh": 1100.0, "power_w": 6000.0}),
            (4, 3, "ended", {"energy_wh": 1300.0}),
        )
    ]
    late = Reading(
        charger_id="CP-E",
        evse_id=1,
        connector_id=1,
        seq=3,
        ts=t0 + timedelta(minutes=2),
        transaction_id="e-1",
        values={"energy_wh": 1200.0, "power_w": 7200.0},
    )
    other = Reading(
        charger_id="CP-O",
        evse_id=1,
        connector_id=1,
        seq=9,
        ts=t0,
        transaction_id="o-1",
        tx_event="ended",
        values={"energy_wh": 5.0},
    )
    clock = Clock(t0 + timedelta(minutes=30))
    async with _job(influx_db, clock) as job:
        _store(influx_db, [*readings, other])
        await job.run_pass()
        before = _sessions(influx_db)
        assert (before[("CP-E", "e-1")]["readings"], before[("CP-E", "e-1")]["max_power_w"]) == (
            3,
            6000.0,
        )

        clock.now += timedelta(days=3)
        _store(influx_db, [late])
        _write(influx_db, late_lines([(GW, [ts_ns(late.ts)])], ts_ns(clock.now), bridge="b-1"))
        result = await job.run_pass()
    after = _sessions(influx_db)
    assert result.written == {"active": 0, "ended": 1, "superseded": 0}
    e = after[("CP-E", "e-1")]
    assert (e["readings"], e["max_power_w"], e["energy_wh"], e["state"]) == (
        4,
        7200.0,
        300.0,
        "ended",
    )
    assert after[("CP-O", "o-1")] == before[("CP-O", "o-1")]


async def test_a_confirmed_seq_gap_flags_the_session(influx_db: InfluxTarget) -> None:
    """A bridge's ``seqgaps`` point (missing readings of the gateway) overlapping the
    session's seqs flags it ``seq_gap``; once the bridge says they were filled, the flag goes
    at the next computation."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    readings = [
        Reading(
            charger_id="CP-G",
            evse_id=1,
            connector_id=1,
            seq=s,
            ts=t0 + timedelta(minutes=s),
            transaction_id="g-1",
            values={"energy_wh": 10.0 * s},
        )
        for s in (1, 2, 5, 6)
    ]
    _store(influx_db, readings)
    now = t0 + timedelta(minutes=30)
    gap = f'seqgaps,bridge=b-1,gateway_id={GW} missing=2i,gaps=1i,first=3i,last=4i,epoch="{EPOCH}"'
    _write(influx_db, [f"{gap} {ts_ns(now) - 60_000_000_000}"])
    async with _job(influx_db, Clock(now)) as job:
        await job.run_pass()
    assert _sessions(influx_db)[("CP-G", "g-1")]["flags"] == "seq_gap"


def test_the_command_runs_one_pass(influx_db: InfluxTarget) -> None:
    """``telemetry-sessions --once`` (as ``python -m sessions``): creates ``keep``, writes the
    sessions, exits 0."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    _store(influx_db, _transactions(t0))
    env = env_for(
        SessionsSettings,
        influx={"url": influx_db.url, "database": influx_db.database},
        http_port=0,
        log_format="text",
    )
    done = subprocess.run(
        [sys.executable, "-m", "sessions", "--once"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(_sessions(influx_db)) == {("CP-1", "7001"), ("CP-2", "sim-42")}


async def test_a_session_ended_by_silence_that_goes_on_is_active_again(
    influx_db: InfluxTarget,
) -> None:
    """A gateway silent longer than SILENCE whose charger then goes on with the transaction:
    the session is active again, and its point has no ``ended_at`` any more (InfluxDB keeps
    the fields a point written again leaves out, so the job drops the point first)."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)

    def reading(seq: int, minutes: int) -> Reading:
        return Reading(
            charger_id="CP-R",
            evse_id=1,
            connector_id=1,
            seq=seq,
            ts=t0 + timedelta(minutes=minutes),
            transaction_id="r-1",
            values={"energy_wh": 10.0 * seq},
        )

    _store(influx_db, [reading(1, 0), reading(2, 1)])
    clock = Clock(t0 + timedelta(minutes=40))
    async with _job(influx_db, clock, silence="30m") as job:
        await job.run_pass()
        ended = _sessions(influx_db)[("CP-R", "r-1")]
        assert (ended["state"], ended["end_cause"]) == ("ended", "silence")
        _store(influx_db, [reading(3, 45)])
        clock.now = t0 + timedelta(minutes=46)
        await job.run_pass()
    again = _sessions(influx_db)[("CP-R", "r-1")]
    assert (again["state"], again["end_cause"], again["ended_at"]) == ("active", "", None)
    assert (again["readings"], again["energy_wh"], again["duration_s"]) == (3, 20.0, 2700.0)


async def test_a_session_carried_on_pass_by_pass_equals_one_computed_whole(
    influx_db: InfluxTarget,
) -> None:
    """Readings arriving live, a pass after each few (the steady passes carry the active
    sessions on with the readings of their stretch): the stored sessions equal those a new
    process computes whole from the same readings."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    readings = sorted(_transactions(t0), key=lambda r: r.ts)
    clock = Clock(t0)
    async with _job(influx_db, clock, silence="1d") as job:
        for minute in range(0, 14):
            clock.now = t0 + timedelta(minutes=minute, seconds=30)
            _store(
                influx_db,
                [
                    r
                    for r in readings
                    if r.ts < clock.now and r.ts >= clock.now - timedelta(minutes=1)
                ],
            )
            await job.run_pass()
    live = _sessions(influx_db)
    _q(influx_db, 'DROP MEASUREMENT "sessions"')
    _q(influx_db, 'DROP MEASUREMENT "session_state"')
    async with _job(influx_db, Clock(clock.now), silence="1d") as job:
        result = await job.run_pass()
    assert result.written["ended"] + result.written["active"] == 2
    assert _sessions(influx_db) == live
    assert live[("CP-1", "7001")] == _expected_ocpp(t0)


async def test_backfill_computes_the_sessions_of_a_range_behind_lookback(
    influx_db: InfluxTarget,
) -> None:
    """Readings three days old (written straight into InfluxDB, no mark): a pass does not see
    them; ``backfill`` over their range computes their sessions, and leaves the progress."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    _store(influx_db, _transactions(t0))
    clock = Clock(t0 + timedelta(days=3))
    async with _job(influx_db, clock) as job:
        await job.run_pass()
        assert _sessions(influx_db) == {}
        result = await job.backfill(t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    assert result.written == {"active": 0, "ended": 2, "superseded": 0}
    stored = _sessions(influx_db)
    assert stored[("CP-1", "7001")] == _expected_ocpp(t0)
    assert stored[("CP-2", "sim-42")]["end_cause"] == "silence"
    assert stored[("CP-2", "sim-42")]["ended_at"] == ts_ns(t0 + timedelta(seconds=570))


def test_the_service_serves_health_and_metrics_and_stops_on_sigterm(
    influx_db: InfluxTarget,
) -> None:
    """``telemetry-sessions`` as a service: ``/healthz`` answers, ``/metrics`` counts its
    passes and the sessions written, SIGTERM stops it with status 0."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    _store(influx_db, _transactions(t0))
    port = free_port()
    env = env_for(
        SessionsSettings,
        influx={"url": influx_db.url, "database": influx_db.database},
        http_port=port,
        interval_s=0.5,
        log_format="text",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessions"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def metrics() -> str:
            try:
                return httpx.get(f"{base}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""

        wait_until(
            "two passes", lambda: 'telemetry_sessions_passes_total{outcome="ok"} 2.0' in metrics()
        )
        assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}
        text = metrics()
        assert 'telemetry_sessions_written_total{state="ended"} 1.0' in text
        assert 'telemetry_sessions_written_total{state="active"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]


async def test_an_ocpp_status_notification_inside_a_transaction_does_not_end_it(
    influx_db: InfluxTarget,
) -> None:
    """OCPP 1.6: StatusNotification carries no transactionId, so the ``Charging`` status a
    charger sends right after StartTransaction (and ``SuspendedEV`` mid-session) is a reading of
    the connector without the transaction: it must not end the session by ``next``."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    started = Reading(
        charger_id="CP-O",
        evse_id=1,
        connector_id=1,
        seq=1,
        ts=t0,
        transaction_id="9001",
        tx_event="started",
        values={"energy_wh": 1000.0},
    )
    charging = Reading(
        charger_id="CP-O",
        evse_id=1,
        connector_id=1,
        seq=2,
        ts=t0 + timedelta(seconds=1),
        status="Charging",
        values={"error_code": 0.0},
    )
    _store(influx_db, [started, charging])
    clock = Clock(t0 + timedelta(seconds=30))
    async with _job(influx_db, clock, silence="2h") as job:
        await job.run_pass()
        s = _sessions(influx_db)[("CP-O", "9001")]
        assert (s["state"], s["end_cause"]) == ("active", "")

        def reading(seq: int, s: float, **more: Any) -> Reading:
            return Reading(
                charger_id="CP-O",
                evse_id=1,
                connector_id=1,
                seq=seq,
                ts=t0 + timedelta(seconds=s),
                **more,
            )

        # MeterValues of the transaction, then SuspendedEV (the car paused): still active.
        _store(
            influx_db,
            [
                reading(3, 60, transaction_id="9001", values={"energy_wh": 1100.0}),
                reading(4, 61, status="SuspendedEV", values={"error_code": 0.0}),
            ],
        )
        clock.now = t0 + timedelta(seconds=90)
        await job.run_pass()
        s = _sessions(influx_db)[("CP-O", "9001")]
        assert (s["state"], s["end_cause"], s["energy_wh"]) == ("active", "", 100.0)
        # A reading of no transaction and no status (not a StatusNotification): it ends it.
        _store(influx_db, [reading(5, 120, values={"energy_wh": 1100.0})])
    clock.now = t0 + timedelta(seconds=150)
    async with _job(influx_db, clock, silence="2h") as job:  # computed whole: InfluxQL's check
        await job.run_pass()
    s = _sessions(influx_db)[("CP-O", "9001")]
    assert (s["state"], s["end_cause"], s.get("ended_at")) == (
        "ended",
        "next",
        ts_ns(t0 + timedelta(seconds=60)),
    )


async def test_more_active_sessions_than_a_pass_computes_do_not_hold_the_progress_back(
    influx_db: InfluxTarget,
) -> None:
    """Every stored active session is looked at each pass: with more of them than
    MAX_SESSIONS_PER_PASS (4,000 at 10,000 chargers, 10 sessions of an hour a day), some are
    always deferred; they are found again in the store, so the progress is still stored."""
    _keep(influx_db)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    _store(
        influx_db,
        [
            Reading(
                charger_id=f"CP-{i}",
                evse_id=1,
                connector_id=1,
                seq=1,
                ts=t0,
                transaction_id=f"a-{i}",
                values={"energy_wh": 1.0},
            )
            for i in range(3)
        ],
    )
    clock = Clock(t0 + timedelta(minutes=5))
    async with _job(influx_db, clock, silence="2h", max_sessions_per_pass=2) as job:
        results = []
        for _ in range(4):
            results.append(await job.run_pass())
            clock.now += timedelta(seconds=30)
    assert len(_sessions(influx_db)) == 3
    assert results[-1].scanned_until is not None
