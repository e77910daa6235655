"""The session rules of docs/design.md#sessions, on plain rows (sessions/compute.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sessions.compute import Row, SeqGap, Session, compute, to_line

S = 1_000_000_000
T0 = 1_800_000_000 * S
HOUR = 3600 * S


def row(
    t_s: float,
    seq: int,
    energy: float | None = None,
    *,
    power: float | None = None,
    event: str | None = None,
    reason: str | None = None,
    tag: str | None = None,
    suspect: float | None = None,
    connector: int = 1,
    epoch: str | None = "00000000000000aa",
) -> Row:
    return Row(
        ts_ns=T0 + int(t_s * S),
        seq=seq,
        epoch=epoch,
        energy_wh=energy,
        power_w=power,
        energy_suspect=suspect,
        tx_event=event,
        stop_reason=reason,
        id_tag_hash=tag,
        gateway_id="gw-1",
        evse_id=1,
        connector_id=connector,
    )


def session(rows: list[Row], *, now_s: float = 60, newer: bool = False, **kw: object) -> Session:
    out = compute(
        "CP-1",
        "tx-1",
        rows,
        now_ns=T0 + int(now_s * S),
        silence_ns=4 * HOUR,
        newer_on_connector=newer,
        **kw,  # type: ignore[arg-type]
    )
    assert out is not None
    return out


def test_ocpp_session_energy_is_meter_stop_minus_meter_start_exactly() -> None:
    """The started and ended readings carry meterStart and meterStop: energy is their exact
    difference, whatever the readings between say (and wherever they sort)."""
    rows = [
        row(10, 3, 10_000.7, power=7000.0),
        row(0, 1, 10_000.3, event="started", tag="ab" * 16),
        row(20, 4, 10_100.9, power=7400.0),
        row(30, 6, 10_200.1, event="ended", reason="EVDisconnected"),
        row(31, 7, 10_200.4),  # Transaction.End MeterValues after the stop
    ]
    s = session(rows)
    assert s.state == "ended"
    assert s.end_cause == "stop"
    assert s.meter_start_wh == 10_000.3
    assert s.meter_stop_wh == 10_200.1
    assert s.energy_wh == 10_200.1 - 10_000.3
    assert s.started_at_ns == T0
    assert s.ended_at_ns == T0 + 30 * S
    assert s.duration_s == 30.0
    assert s.stop_reason == "EVDisconnected"
    assert s.id_tag_hash == "ab" * 16
    assert s.max_power_w == 7400.0
    assert s.readings == 5
    assert (s.first_seq, s.last_seq) == (1, 7)
    assert s.last_reading_at_ns == T0 + 31 * S
    assert s.flags == ()


def test_without_a_stop_energy_is_last_minus_first_register_by_ts() -> None:
    s = session([row(20, 3, 130.0), row(0, 1, 100.0), row(10, 2, None), row(5, 5, 110.0)])
    assert s.state == "active"
    assert s.end_cause == ""
    assert s.ended_at_ns is None
    assert (s.meter_start_wh, s.meter_stop_wh, s.energy_wh) == (100.0, 130.0, 30.0)
    assert s.duration_s == 20.0
    assert s.max_power_w is None
    assert s.stop_reason == ""


def test_a_start_without_energy_takes_the_oldest_register() -> None:
    s = session([row(0, 1, None, event="started"), row(5, 2, 50.0), row(9, 3, 58.0)])
    assert (s.meter_start_wh, s.energy_wh) == (50.0, 8.0)
    assert s.started_at_ns == T0


def test_register_going_backwards_is_flagged_not_corrected() -> None:
    s = session([row(0, 1, 100.0), row(10, 2, 90.0), row(20, 3, 120.0)])
    assert s.flags == ("register_backwards",)
    assert s.energy_wh == 20.0


def test_energy_suspect_readings_are_flagged() -> None:
    s = session([row(0, 1, 0.0, suspect=2.0, event="started"), row(10, 2, 5.0)])
    assert s.flags == ("energy_suspect",)
    assert session([row(0, 1, 0.0, suspect=0.0)]).flags == ()


def test_silence_ends_a_session_at_its_newest_reading() -> None:
    rows = [row(0, 1, 1.0), row(100, 2, 3.0)]
    assert session(rows, now_s=100 + 4 * 3600 - 1).state == "active"
    s = session(rows, now_s=100 + 4 * 3600)
    assert (s.state, s.end_cause, s.ended_at_ns) == ("ended", "silence", T0 + 100 * S)
    assert s.duration_s == 100.0


def test_a_newer_reading_on_the_connector_ends_it_next_before_silence() -> None:
    s = session([row(0, 1, 1.0), row(10, 2, 3.0)], newer=True, now_s=9 * 3600)
    assert (s.state, s.end_cause, s.ended_at_ns) == ("ended", "next", T0 + 10 * S)


def test_a_stop_wins_over_next() -> None:
    s = session([row(0, 1, 1.0), row(10, 2, 3.0, event="ended")], newer=True)
    assert s.end_cause == "stop"


def test_readings_on_two_connectors_keep_the_first_ones_and_flag_it() -> None:
    s = session([row(10, 2, 3.0, connector=2), row(0, 1, 1.0, connector=1)])
    assert s.connector_id == 1
    assert s.flags == ("connector_changed",)


def test_no_energy_leaves_the_meters_out() -> None:
    s = session([row(0, 1, None, power=10.0), row(10, 2, None, power=20.0)])
    assert s.flags == ("no_energy",)
    assert (s.meter_start_wh, s.meter_stop_wh, s.energy_wh) == (None, None, None)
    line = to_line(s)
    assert "energy_wh" not in line
    assert "meter_start_wh" not in line
    assert "max_power_w=20.0" in line
    assert 'flags="no_energy"' in line


@pytest.mark.parametrize(
    ("gap", "flagged"),
    [
        (SeqGap(5, 6, "00000000000000aa"), True),
        (SeqGap(1, 2, None), True),  # touches the first seq
        (SeqGap(11, 20, "00000000000000aa"), False),  # after the session
        (SeqGap(5, 6, "00000000000000bb"), False),  # another outbox epoch
    ],
)
def test_a_confirmed_gap_overlapping_the_sessions_seqs_is_flagged(
    gap: SeqGap, flagged: bool
) -> None:
    s = session([row(0, 2, 1.0), row(10, 10, 2.0)], gaps=[gap])
    assert ("seq_gap" in s.flags) is flagged


def test_no_rows_no_session() -> None:
    assert compute("c", "t", [], now_ns=0, silence_ns=1, newer_on_connector=False) is None


def test_line_protocol_of_an_ended_session() -> None:
    s = session(
        [row(0, 1, 100.0, event="started"), row(30, 2, 150.5, event="ended", reason="Local")]
    )
    assert to_line(s) == (
        "sessions,charger_id=CP-1,connector_id=1,evse_id=1,gateway_id=gw-1 "
        'transaction_id="tx-1",state="ended",end_cause="stop",meter_start_wh=100.0,'
        "meter_stop_wh=150.5,energy_wh=50.5,ended_at="
        f"{T0 + 30 * S}i,first_seq=1i,last_seq=2i,duration_s=30.0,"
        'stop_reason="Local",id_tag_hash="",readings=2i,flags="",'
        f"last_reading_at={T0 + 30 * S}i,computed_at={T0 + 60 * S}i {T0}"
    )


def test_same_as_ignores_only_computed_at() -> None:
    rows = [row(0, 1, 1.0), row(10, 2, 3.0)]
    a, b = session(rows, now_s=60), session(rows, now_s=70)
    assert a.same_as(b)
    assert not a.same_as(session([*rows, row(20, 3, 4.0)], now_s=70))
    assert not a.same_as(None)


def _random_rows(rng: random.Random) -> list[Row]:
    rows = []
    energy = rng.uniform(0, 1e6)
    for i in range(rng.randint(1, 30)):
        energy += rng.choice([0.0, 12.5, 100.25, -3.0]) if i else 0.0
        rows.append(
            row(
                i * 10 + rng.random(),
                1000 + i * rng.choice([1, 1, 2]),
                None if rng.random() < 0.2 else energy,
                power=None if rng.random() < 0.3 else rng.uniform(0, 22_000),
                event="started" if i == 0 and rng.random() < 0.5 else None,
                reason=rng.choice([None, None, "Local"]),
                tag=rng.choice([None, "ab" * 16, "cd" * 16]),
                suspect=rng.choice([None, None, 0.0, 1.0]),
                connector=rng.choice([1, 1, 1, 1, 2]),
            )
        )
    if rng.random() < 0.5:
        last = rows[-1]
        rows[-1] = last._replace(tx_event="ended", stop_reason=rng.choice([None, "EVDisconnected"]))
    return rows


@pytest.mark.parametrize("seed", range(300))
def test_carrying_an_active_session_on_equals_computing_it_whole(seed: int) -> None:
    """An active session computed from its first readings, carried on with the newer ones
    (``prior``), equals the session computed from all of them: every field, every flag."""
    rng = random.Random(seed)
    rows = _random_rows(rng)
    cut = rng.randint(1, len(rows))
    now = T0 + int(rng.choice([400, 20_000]) * S)
    newer = rng.random() < 0.2
    kw: dict[str, Any] = {"now_ns": now, "silence_ns": 4 * HOUR}
    head = compute("CP-1", "tx-1", rows[:cut], newer_on_connector=False, **kw)
    assert head is not None
    whole = compute("CP-1", "tx-1", rows, newer_on_connector=newer, **kw)
    if head.state != "active" or any(r.tx_event == "started" for r in rows[cut:]):
        return
    carried = compute("CP-1", "tx-1", rows[cut:], newer_on_connector=newer, prior=head, **kw)
    assert carried == whole


def test_only_newer_readings_carry_a_session_on() -> None:
    head = session([row(0, 1, 1.0), row(10, 2, 2.0)])
    with pytest.raises(ValueError, match="newer"):
        compute("CP-1", "tx-1", [row(5, 3, 1.5)], now_ns=T0, silence_ns=HOUR,
                newer_on_connector=False, prior=head)  # fmt: skip
    ended = session([row(0, 1, 1.0), row(10, 2, 2.0, event="ended")])
    with pytest.raises(ValueError, match="active"):
        compute("CP-1", "tx-1", [row(20, 3, 3.0)], now_ns=T0, silence_ns=HOUR,
                newer_on_connector=False, prior=ended)  # fmt: skip


def test_energy_is_the_decimal_difference_of_the_registers() -> None:
    """A billing system reads 240.2 Wh for registers 1204178.9 and 1204419.1, not the binary
    difference of the floats (240.20000000018626)."""
    from telemetry_common.energy import register_difference

    assert 1204419.1 - 1204178.9 != 240.2
    assert register_difference(1204178.9, 1204419.1) == 240.2
    assert register_difference(1000, 2500) == 1500.0
    assert register_difference(5.5, 5.25) == -0.25
