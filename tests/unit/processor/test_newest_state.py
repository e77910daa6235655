"""The newest-stored state (docs/design.md#newest-stored-state): each bridge writes only what
advances, readers take the newest over bridges, and the warm-up seeds from it and the recent
window without a scan of all history."""

from __future__ import annotations

from processor.state import State
from processor.state.newest import NewestState
from processor.state.storage import WarmUp, complete_warm_up, warm_up
from telemetry_common.influx_query import Series
from telemetry_common.newest_state import (
    ChargerMark,
    GatewayMark,
    charger_marks,
    current_epochs,
    gateway_marks,
)
from tests.unit.processor.test_seqs import E1, E2, ScriptedInflux

CHARGER_COLUMNS = ["time", "bridge", "charger_id", "gateway_id", "seq", "ts"]
GATEWAY_COLUMNS = ["time", "bridge", "epoch", "gateway_id", "newest_ts", "high", "high_ts"]


def test_a_bridge_writes_only_what_advances_beyond_what_it_knows() -> None:
    state = NewestState("b1")
    first = state.lines(
        [("cp-1", ChargerMark(100, 5, "gw-1"))], [(("gw-1", E1), [5, 6], [90, 100])]
    )
    assert first == [
        'newest_chargers,bridge=b1,charger_id=cp-1 ts=100i,seq=5i,gateway_id="gw-1" 0',
        f"newest_gateways,bridge=b1,epoch={E1},gateway_id=gw-1 "
        "newest_ts=100i,high=6i,high_ts=100i 0",
    ]
    # older (a late batch of another connector) and equal: nothing; a higher seq: the gateway
    assert state.lines([("cp-1", ChargerMark(99, 9, "gw-1"))], [(("gw-1", E1), [4], [50])]) == []
    again = state.lines([], [(("gw-1", E1), [7], [80])])
    assert again == [
        f"newest_gateways,bridge=b1,epoch={E1},gateway_id=gw-1 newest_ts=100i,high=7i,high_ts=80i 0"
    ]
    # seeded with another bridge's newer point: this bridge's older news is not written
    state.seed({"cp-2": ChargerMark(500, 1, "gw-1")}, {})
    assert state.lines([("cp-2", ChargerMark(400, 2, "gw-1"))], []) == []


def test_readers_take_the_newest_over_bridges() -> None:
    """Two bridges committed a charger's batches interleaved: b2's point is the newer one for
    cp-1, b1's for cp-2; a gateway's epochs merge (newest by time, highest seq) over bridges,
    and its current epoch is the one of its newest reading."""
    chargers = Series(
        "newest_chargers",
        CHARGER_COLUMNS,
        [
            [0, "b1", "cp-1", "gw-1", 10, 1_000],
            [0, "b2", "cp-1", "gw-2", 3, 2_000],
            [0, "b1", "cp-2", "gw-1", 11, 3_000],
            [0, "b2", "cp-2", "gw-1", 12, 2_500],
        ],
    )
    assert charger_marks([chargers]) == {
        "cp-1": ChargerMark(2_000, 3, "gw-2"),
        "cp-2": ChargerMark(3_000, 11, "gw-1"),
    }
    gateways = Series(
        "newest_gateways",
        GATEWAY_COLUMNS,
        [
            [0, "b1", E1, "gw-1", 5_000, 900, 4_000],
            [0, "b2", E1, "gw-1", 4_500, 950, 4_500],
            [0, "b1", E2, "gw-1", 6_000, 3, 6_000],
            [0, "b2", None, "gw-2", 10, 7, 10],
        ],
    )
    marks = gateway_marks([gateways])
    assert marks[("gw-1", E1)] == GatewayMark(5_000, 950, 4_500)
    assert current_epochs(marks) == {
        "gw-1": (E2, GatewayMark(6_000, 3, 6_000)),
        "gw-2": (None, GatewayMark(10, 7, 10)),
    }


async def test_warm_up_seeds_from_the_state_and_the_window_without_scanning_history() -> None:
    """The state knows cp-1 (newer than the window's point) and gw-1's epoch E1; the window
    knows cp-2, which the state does not have yet (its bridge stopped before writing it). No
    query reads the readings without a time bound."""
    state_chargers = [
        Series("newest_chargers", CHARGER_COLUMNS, [[0, "b1", "cp-1", "gw-1", 9, 900]])
    ]
    state_gateways = [
        Series("newest_gateways", GATEWAY_COLUMNS, [[0, "b1", E1, "gw-1", 900, 40, 900]])
    ]
    recent = [
        Series(
            "readings", ["time", "seq"], [[800, 8]], {"charger_id": "cp-1", "gateway_id": "gw-1"}
        ),
        Series(
            "readings", ["time", "seq"], [[850, 41]], {"charger_id": "cp-2", "gateway_id": "gw-1"}
        ),
    ]
    influx = ScriptedInflux(
        {
            '"keep"."newest_chargers"': state_chargers,
            '"keep"."newest_gateways"': state_gateways,
            'GROUP BY "charger_id", "gateway_id"': recent,
        }
    )
    state = State()
    newest = NewestState("b2")
    done = await warm_up(state, influx, 0.1, newest)
    assert (done.complete, done.state_found) == (True, True)
    assert state.bindings.get("cp-1") == "gw-1"
    assert state.bindings.get("cp-2") == "gw-1"
    assert state.gaps.high("gw-1", E1) == 40
    readings = [q for q in influx.queries if 'FROM "readings"' in q]
    assert readings
    assert all("time >= " in q for q in readings)
    # what the state holds is not written again by this bridge
    assert newest.lines([("cp-1", ChargerMark(900, 9, "gw-1"))], []) == []


async def test_a_database_without_the_state_is_read_back_in_the_background() -> None:
    """No state (an older version wrote the database): the history before the window is read
    back one week per query (every query time-bounded), seeded where nothing is known yet (a
    charger bound meanwhile keeps its gateway) and written to the state, so the next start
    finds it there."""
    older = [
        Series(
            "readings", ["time", "seq"], [[500, 5]], {"charger_id": "cp-9", "gateway_id": "gw-9"}
        ),
        Series(
            "readings", ["time", "seq"], [[500, 6]], {"charger_id": "cp-8", "gateway_id": "gw-9"}
        ),
    ]
    influx = ScriptedInflux({'GROUP BY "charger_id", "gateway_id"': older})
    state = State()
    state.bindings.claim("gw-1", "cp-8")  # consuming began: cp-8 came through gw-1
    written: list[str] = []

    async def write(lines: list[str]) -> dict[str, str]:
        written.extend(lines)
        return {}

    await complete_warm_up(
        state, influx, NewestState("b1"), write, 3600, WarmUp(False, False), history_s=3 * 7 * 86400
    )
    readings = [q for q in influx.queries if 'FROM "readings"' in q]
    assert all("time >= " in q for q in readings)
    assert sum('GROUP BY "charger_id", "gateway_id"' in q for q in readings) == 1 + 3
    assert state.bindings.get("cp-9") == "gw-9"
    assert state.bindings.get("cp-8") == "gw-1"
    assert any(line.startswith("newest_chargers,bridge=b1,charger_id=cp-9 ") for line in written)
