"""Seq gap tracking: suspected on a jump, filled by late arrivals, confirmed against storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processor.lineproto import ts_ns
from processor.state.gaps import GapTracker

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def ts(i: int) -> int:
    return ts_ns(T0 + timedelta(seconds=i))


def test_jump_opens_a_gap_and_late_arrivals_fill_it() -> None:
    """1,2,6 suspects 3..5; a late 4 splits it into 3 and 5; replays change nothing."""
    g = GapTracker()
    for seq in (1, 2, 6, 2, 6):
        g.observe("gw", seq, ts(seq), now=0.0)
    assert [(x["first_seq"], x["last_seq"]) for x in g.report()["gw"]] == [(3, 5)]
    g.observe("gw", 4, ts(4), now=0.0)
    assert [(x["first_seq"], x["last_seq"]) for x in g.report()["gw"]] == [(3, 3), (5, 5)]
    g.observe("gw", 3, ts(3), now=0.0)
    g.observe("gw", 5, ts(5), now=0.0)
    assert g.report() == {}


def test_seed_catches_a_gap_across_a_restart() -> None:
    """Seeded with the highest stored seq, the first reading after a restart shows the gap."""
    g = GapTracker()
    g.seed("gw", 10, ts(10))
    g.observe("gw", 13, ts(13), now=0.0)
    assert g.report()["gw"][0]["first_seq"] == 11


async def test_confirm_drops_what_storage_holds_and_counts_the_rest() -> None:
    """After the grace period, a gap another bridge stored disappears; a real one is counted."""
    g = GapTracker()
    for seq in (1, 4, 5, 9):
        g.observe("gw", seq, ts(seq), now=0.0)
    stored = {2, 3, 6}  # 2..3 stored by another bridge; of 6..8 only 6

    async def count(gw: str, first: int, last: int, lo: datetime, hi: datetime) -> int:
        assert lo < T0 + timedelta(seconds=first)
        assert hi > T0 + timedelta(seconds=last)
        return len([s for s in stored if first <= s <= last])

    await g.confirm(count, now=5.0, grace_s=10.0)
    assert g.missing() == 0  # too early: still suspected
    await g.confirm(count, now=11.0, grace_s=10.0)
    [gap] = g.report()["gw"]
    assert (gap["first_seq"], gap["last_seq"], gap["state"]) == (6, 8, "confirmed")
    assert g.missing() == 2


def test_open_gaps_are_bounded() -> None:
    """A gateway that skips seq wildly cannot grow the tracker without bound."""
    g = GapTracker(max_gaps_per_gateway=3)
    for seq in range(0, 20, 2):
        g.observe("gw", seq, ts(seq), now=0.0)
    assert len(g.report()["gw"]) == 3
    assert g.dropped == 6


def test_observe_all_is_observe_in_turn() -> None:
    """observe_all (a message's seqs at once, with a shortcut for the next seqs in order) ends
    in the same state as observing each seq in turn, for in-order, jumping, replayed and late
    runs, on a new and on a known gateway."""
    runs = [[1, 2, 3], [4, 5], [9, 10], [6, 7], [7, 8], [11], [], [12, 14, 13], [20, 19, 21]]
    one, many = GapTracker(), GapTracker()
    for run in runs:
        for seq in run:
            one.observe("gw", seq, ts(seq), now=0.0)
        many.observe_all("gw", run, [ts(s) for s in run], now=0.0)
        assert many.report() == one.report()
        assert many._gateways["gw"].high == one._gateways["gw"].high
        assert many._gateways["gw"].high_ts_ns == one._gateways["gw"].high_ts_ns
    assert one.report()["gw"]  # the runs did open gaps (the comparison was not trivial)


def test_a_new_gateways_readings_may_be_observed_out_of_order() -> None:
    """Batches are committed concurrently and finish in any order: a new gateway seen first at
    seq 5, then 1 and 2, has 3..4 suspected, as in order; a seeded gateway does not suspect
    what lies below its seed (history), and adjacent seqs open nothing."""
    g = GapTracker()
    for seq in (5, 1, 2):
        g.observe("gw", seq, ts(seq), now=0.0)
    assert [(x["first_seq"], x["last_seq"]) for x in g.report()["gw"]] == [(3, 4)]
    g.observe_all("gw", [3, 4], [ts(3), ts(4)], now=0.0)
    assert g.report() == {}
    g.observe_all("gw2", [10, 11], [ts(10), ts(11)], now=0.0)
    g.observe("gw2", 9, ts(9), now=0.0)
    g.observe("gw2", 7, ts(7), now=0.0)
    assert [(x["first_seq"], x["last_seq"]) for x in g.report()["gw2"]] == [(8, 8)]
    g.seed("old", 100, ts(100))
    g.observe("old", 50, ts(50), now=0.0)
    assert "old" not in g.report()
