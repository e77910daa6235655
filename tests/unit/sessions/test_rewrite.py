"""What a session computed again writes (sessions/rewrite.py)."""

from __future__ import annotations

import dataclasses

from sessions.compute import Session, compute
from sessions.rewrite import points_to_write
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
