"""The sessions read path's pure parts: its InfluxQL (quoted, superseded points never read),
session documents from rows, CSV cells, the export cursor and the power curve's buckets.
Against InfluxDB: tests/integration/query_api/test_sessions.py."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from query_api import cursor
from query_api.resolution import Retentions
from query_api.sessions import (
    COLUMNS,
    MAX_KEYS,
    Position,
    csv_header,
    csv_rows,
    curve_resolution,
    curve_step,
    session_of,
)
from query_api.timespec import Window
from sessions.compute import Session, to_line
from telemetry_common import influxql
from telemetry_common.errors import InvalidIdError
from telemetry_common.influxql import QueryBuildError
from tests.support import sessions_data

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
NS = 1_777_636_800_000_000_000  # T0
CURSORS = cursor.Cursors(b"k" * 32)


def test_session_queries_skip_superseded_points_and_quote_their_input() -> None:
    q = influxql.sessions_query(T0, T0 + timedelta(days=1), limit=5, gateway_id="gw-1")
    assert q == (
        'SELECT * FROM "keep"."sessions" WHERE time >= \'2026-05-01T12:00:00.000000Z\' AND '
        "time < '2026-05-02T12:00:00.000000Z' AND \"state\" != 'superseded' AND "
        "\"gateway_id\" = 'gw-1' ORDER BY time ASC LIMIT 5"
    )
    newest = influxql.sessions_query(
        T0, T0 + timedelta(days=1), limit=2, charger_id="cp-1", state="active", newest_first=True
    )
    assert "\"state\" = 'active' AND \"charger_id\" = 'cp-1' ORDER BY time DESC LIMIT 2" in newest
    one = influxql.session_query("cp-1", "tx.9")
    assert "\"transaction_id\" = 'tx.9' AND \"state\" != 'superseded'" in one
    with pytest.raises(QueryBuildError):
        influxql.sessions_query(T0, T0 + timedelta(1), limit=1, state="superseded")
    with pytest.raises(InvalidIdError):
        influxql.session_query("cp-1", "x' OR 1=1")
    with pytest.raises(InvalidIdError):
        influxql.registry_query(["cp-1", 'cp"2'])
    registry = influxql.registry_query(["cp-1", "cp-2", "cp-1"])
    assert registry.count('charger_id" = ') == 2
    assert registry.startswith('SELECT last("gateway_id") AS "gateway_id", "vendor", "model"')


def test_a_power_curve_reads_one_connector() -> None:
    q = influxql.history_query(
        "cp-1", ["power_w"], T0, T0 + timedelta(hours=1), 10, every=timedelta(minutes=6),
        agg="mean", connector=(1, 2),
    )  # fmt: skip
    assert "AND \"evse_id\" = '1' AND \"connector_id\" = '2' AND time >=" in q
    assert "connector_id" not in influxql.history_query("cp-1", None, T0, T0 + timedelta(1), 1)
    with pytest.raises(QueryBuildError):
        influxql.history_query("cp-1", None, T0, T0 + timedelta(1), 1, connector=(1, 256))


def _row(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "time": NS, "charger_id": "cp-1", "gateway_id": "gw-1", "evse_id": "1",
        "connector_id": "2", "transaction_id": "t1", "state": "active", "end_cause": "",
        "meter_start_wh": 10.0, "meter_stop_wh": 15.5, "energy_wh": 5.5, "duration_s": 60,
        "stop_reason": "", "id_tag_hash": "", "readings": 3, "flags": "",
        "first_seq": 1, "last_seq": 3, "computed_at": NS,
    }  # fmt: skip
    return base | fields


def test_a_row_becomes_a_session_document_with_nulls_for_what_is_not_known() -> None:
    doc = session_of(_row())
    assert list(doc) == list(COLUMNS)
    assert doc["started_at"] == "2026-05-01T12:00:00.000Z"
    assert (doc["evse_id"], doc["connector_id"], doc["readings"]) == (1, 2, 3)
    assert (doc["ended_at"], doc["end_cause"], doc["stop_reason"], doc["max_power_w"]) == (
        None, None, None, None,
    )  # fmt: skip
    assert doc["flags"] == []
    assert doc["duration_s"] == 60.0
    ended = session_of(_row(ended_at=NS + 60 * 10**9, state="ended", flags="seq_gap,no_energy"))
    assert ended["ended_at"] == "2026-05-01T12:01:00.000Z"
    assert ended["flags"] == ["seq_gap", "no_energy"]


def test_an_active_sessions_stale_ended_at_is_not_read() -> None:
    """On InfluxDB 2.x/3.x (no DELETE) a session that ended by silence and went on keeps its
    old ``ended_at`` field: docs/design.md#sessions says to read it only when ``ended``."""
    doc = session_of(_row(ended_at=NS + 60 * 10**9, state="active"))
    assert (doc["state"], doc["ended_at"]) == ("active", None)


def test_csv_cells_never_start_a_formula() -> None:
    doc = session_of(
        _row(charger_id="-cp", transaction_id="=2+3", stop_reason="@x", flags="a,b",
             id_tag_hash="+1", meter_start_wh=-1.5)
    )  # fmt: skip
    text = csv_header() + csv_rows([doc])
    assert text.endswith("\r\n")
    header, row = list(csv.reader(io.StringIO(text)))
    assert header == list(COLUMNS)
    cells = dict(zip(header, row, strict=True))
    assert (cells["charger_id"], cells["transaction_id"], cells["stop_reason"]) == (
        "'-cp", "'=2+3", "'@x",
    )  # fmt: skip
    assert (cells["id_tag_hash"], cells["flags"], cells["ended_at"]) == ("'+1", "a;b", "")
    assert cells["meter_start_wh"] == "-1.5"  # a number, not text: as it is


def _item(charger: str, tx: str, ns: int) -> dict[str, object]:
    return session_of(_row(charger_id=charger, transaction_id=tx, time=ns))


def test_the_export_cursor_carries_the_sessions_returned_at_its_instant() -> None:
    win = Window(T0, T0 + timedelta(days=1))
    first = Position.first(win)
    page = [_item("a", "1", NS), _item("b", "2", NS + 10**9), _item("c", "3", NS + 10**9)]
    nxt = first.after(page)
    assert (nxt.t_ns, nxt.n) == (NS + 10**9, 2)
    assert nxt.keys is not None
    assert len(nxt.keys) == 2
    text = nxt.encode(CURSORS, "q")
    assert Position.decode(CURSORS, text, "q", timedelta(days=2)) == nxt
    # A page that stays at that instant adds to it; beyond MAX_KEYS only the count is kept.
    same = [_item(f"d{i}", "x", NS + 10**9) for i in range(MAX_KEYS)]
    crowded = nxt.after(same)
    assert (crowded.t_ns, crowded.n, crowded.keys) == (NS + 10**9, MAX_KEYS + 2, None)
    assert Position.decode(CURSORS, crowded.encode(CURSORS, "q"), "q", timedelta(2)) == crowded
    with pytest.raises(cursor.CursorError):
        Position.decode(CURSORS, text, "other", timedelta(days=2))
    with pytest.raises(cursor.CursorError, match="exceeds"):
        Position.decode(CURSORS, text, "q", timedelta(hours=1))
    forged = cursor.Cursors(b"x" * 32).encode("sessions", "q", {"o": 0, "e": 1, "t": 0, "n": 0})
    with pytest.raises(cursor.CursorError):
        Position.decode(CURSORS, forged, "q", timedelta(days=2))
    bad = CURSORS.encode("sessions", "q", {"o": NS, "e": NS + 1, "t": NS, "n": 1, "d": "zz"})
    with pytest.raises(cursor.CursorError):
        Position.decode(CURSORS, bad, "q", timedelta(days=2))


@pytest.mark.parametrize(
    ("span", "points", "unit"),
    [
        (timedelta(minutes=19, milliseconds=1), 200, timedelta(seconds=1)),
        (timedelta(minutes=19, milliseconds=1), 4, timedelta(seconds=1)),
        (timedelta(hours=30), 7, timedelta(minutes=1)),
        (timedelta(days=3), 1, timedelta(hours=1)),
        (timedelta(milliseconds=1), 200, timedelta(seconds=1)),
    ],
)
def test_a_curves_buckets_cover_the_session_in_at_most_points(
    span: timedelta, points: int, unit: timedelta
) -> None:
    start = T0 + timedelta(seconds=17, milliseconds=250)
    step = curve_step(start, start + span, points, unit)
    assert step % unit == timedelta(0)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lo = start - (start - epoch) % step
    buckets = -(-(start + span - lo) // step)
    assert 1 <= buckets <= points
    assert lo + buckets * step >= start + span  # they cover the session
    if points > 1:  # not needlessly coarse: at most one unit above span / (points - 1)
        assert step <= max(unit, span / (points - 1)) + unit


def test_a_curve_older_than_the_raw_readings_comes_from_whole_rollup_buckets() -> None:
    rules = Retentions(
        raw=timedelta(days=30), rollup_1m=timedelta(days=365), rollup_1h=timedelta(days=1825),
        rollup_1m_after=timedelta(days=1), rollup_1h_after=timedelta(days=31),
    )  # fmt: skip
    now = T0
    fresh = curve_resolution(now - timedelta(hours=3), now, 200, now=now, rules=rules)
    assert fresh == ("raw", timedelta(seconds=54))
    old = curve_resolution(now - timedelta(days=60), now - timedelta(days=59), 200, now=now,
                           rules=rules)  # fmt: skip
    assert old == ("1m", timedelta(minutes=8))
    ancient = curve_resolution(now - timedelta(days=400), now - timedelta(days=399), 200,
                               now=now, rules=rules)  # fmt: skip
    assert ancient == ("1h", timedelta(hours=1))


def _parsed(line: str) -> tuple[str, dict[str, str], int]:
    head, fields, ts = re.fullmatch(r"(\S+) (.+) (\d+)", line).groups()  # type: ignore[union-attr]
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,]+)', fields)
    return head, dict(pairs), int(ts)


@pytest.mark.parametrize("ended", [True, False])
def test_the_tests_session_points_are_the_sessions_jobs_own(ended: bool) -> None:
    """tests/support/sessions_data.py writes what the sessions job writes (sessions.compute):
    the same tags, fields, types and time, so the API's tests read real points."""
    end = T0 + timedelta(minutes=42) if ended else None
    mine = sessions_data.session(
        "cp-1", "tx-1", T0, gateway_id="gw-1", evse_id=1, connector_id=2, ended_at=end,
        meter_start_wh=100.0, energy_wh=2500.5, max_power_w=7400.0, stop_reason="Local",
        id_tag_hash="ab" * 16, readings=7, flags="seq_gap,energy_suspect",
    )  # fmt: skip
    job = Session(
        charger_id="cp-1", gateway_id="gw-1", evse_id=1, connector_id=2, transaction_id="tx-1",
        state=mine["state"], started_at_ns=sessions_data.ns(T0),
        ended_at_ns=sessions_data.ns(end) if end else None, end_cause=mine["end_cause"],
        meter_start_wh=100.0, meter_stop_wh=2600.5, energy_wh=2500.5, max_power_w=7400.0,
        duration_s=mine["duration_s"], stop_reason="Local", id_tag_hash="ab" * 16, readings=7,
        flags=("seq_gap", "energy_suspect"), first_seq=1, last_seq=7,
        last_reading_at_ns=sessions_data.ns(mine["last_reading_at"]),
        computed_at_ns=sessions_data.ns(mine["computed_at"]),
    )  # fmt: skip
    assert _parsed(sessions_data.session_line(mine)) == _parsed(to_line(job))
