"""What a session computed again writes (sessions/rewrite.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sessions.answers import sessions_of
from sessions.compute import Session, compute, to_line
from sessions.rewrite import points_to_write
from telemetry_common.influx_query import Series
from tests.unit.sessions.test_compute import HOUR, T0, S, row

NOW = T0 + 60 * S


def _session(rows: list, now: int = NOW) -> Session:  # type: ignore[type-arg]
    s = compute("CP-1", "tx-1", rows, now_ns=now, silence_ns=HOUR, newer_on_connector=False)
    assert s is not None
    return s


def test_unchanged_writes_nothing_new_writes_its_point() -> None:
    s = _session([row(0, 1, 1.0), row(10, 2, 2.0)])
    assert points_to_write(s, dataclasses.replace(s, computed_at_ns=NOW + 1), NOW, HOUR) == []
    assert points_to_write(None, s, NOW, HOUR) == [(s, False)]


def test_a_start_moved_earlier_supersedes_the_old_point() -> None:
    old = _session([row(10, 2, 2.0), row(20, 3, 3.0)])
    new = _session([row(0, 1, 1.0), row(10, 2, 2.0), row(20, 3, 3.0)])
    (first, drop1), (second, drop2) = points_to_write(old, new, NOW, HOUR)
    assert (first.state, first.started_at_ns, first.readings) == (
        "superseded",
        old.started_at_ns,
        2,
    )
    assert (second, drop1, drop2) == (new, False, False)


def test_fewer_readings_than_stored_keeps_the_stored_point() -> None:
    old = _session([row(0, 1, 1.0), row(10, 2, 2.0), row(20, 3, 3.0)])
    new = _session([row(10, 2, 2.0), row(20, 3, 3.0)])
    assert points_to_write(old, new, NOW, HOUR) == []


def test_a_field_the_new_point_leaves_out_drops_the_old_one_first() -> None:
    old = _session([row(0, 1, 1.0), row(10, 2, 2.0)], now=T0 + 2 * HOUR)
    assert old.ended_at_ns is not None
    new = _session([row(0, 1, 1.0), row(10, 2, 2.0), row(2 * 3600, 3, 3.0)], now=T0 + 2 * HOUR)
    assert new.state == "active"
    assert points_to_write(old, new, T0 + 2 * HOUR, HOUR) == [(new, True)]


def test_an_active_session_without_readings_left_ends_by_silence() -> None:
    old = _session([row(0, 1, 1.0), row(10, 2, 2.0)])
    assert points_to_write(old, None, NOW, HOUR) == []
    ((ended, drop),) = points_to_write(old, None, T0 + 10 * S + HOUR, HOUR)
    assert (ended.state, ended.end_cause, ended.ended_at_ns, drop) == (
        "ended",
        "silence",
        T0 + 10 * S,
        False,
    )


def test_a_stored_active_sessions_stale_ended_at_is_not_read_so_not_rewritten() -> None:
    """InfluxDB 2.x/3.x (no DELETE) keep the ``ended_at`` of a session that ended by silence
    and went on: read back, it must not make the unchanged active session differ each pass."""
    s = _session([row(0, 1, 1.0), row(10, 2, 2.0)])
    assert s.state == "active"
    fields = dict(f.split("=", 1) for f in to_line(s).split(" ")[1].split(","))
    row_: dict[str, Any] = {k: v.strip('"').removesuffix("i") for k, v in fields.items()}
    row_ |= {"time": s.started_at_ns, "charger_id": "CP-1", "evse_id": "1", "connector_id": "1"}
    row_ |= {"gateway_id": s.gateway_id, "ended_at": s.started_at_ns + 5 * S}
    numeric = ("readings", "first_seq", "last_seq", "last_reading_at", "computed_at")
    row_ |= {k: int(row_[k]) for k in numeric} | {"duration_s": s.duration_s}
    row_ |= {k: float(row_[k]) for k in ("meter_start_wh", "meter_stop_wh", "energy_wh")}
    (stored,) = sessions_of([Series("sessions", list(row_), [list(row_.values())])])
    assert stored.ended_at_ns is None
    assert points_to_write(stored, s, NOW, HOUR) == []
