"""Seq gap tracking: suspected on a jump, filled by late arrivals, confirmed against storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processor.lineproto import ts_ns
from processor.state.gaps import MAX_EPOCHS, GapTracker

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
    g.seed("gw", None, 10, ts(10))
    g.observe("gw", 13, ts(13), now=0.0)
    assert g.report()["gw"][0]["first_seq"] == 11


async def test_confirm_drops_what_storage_holds_and_counts_the_rest() -> None:
    """After the grace period, a gap another bridge stored disappears; a real one is counted."""
    g = GapTracker()
    for seq in (1, 4, 5, 9):
        g.observe("gw", seq, ts(seq), now=0.0)
    stored = {2, 3, 6}  # 2..3 stored by another bridge; of 6..8 only 6

    async def count(
        gw: str, epoch: str | None, first: int, last: int, lo: datetime, hi: datetime
    ) -> int:
        assert epoch is None
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
        assert many._tracks["gw", None].high == one._tracks["gw", None].high
        assert many._tracks["gw", None].high_ts_ns == one._tracks["gw", None].high_ts_ns
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
    g.seed("old", None, 100, ts(100))
    g.observe("old", 50, ts(50), now=0.0)
    assert "old" not in g.report()


E1, E2 = "00000000000000e1", "00000000000000e2"


def spans(g: GapTracker, gateway: str = "gw") -> list[tuple[object, object, object]]:
    return [(x["epoch"], x["first_seq"], x["last_seq"]) for x in g.report().get(gateway, [])]


def test_a_new_epoch_starts_tracking_over_and_its_gaps_are_reported() -> None:
    """A gateway whose outbox was created again (new epoch, seq from 1) and then loses 4..5
    has them suspected: its seqs are not taken for late readings of the old epoch, whose high
    was 100. The old epoch's gap stays reported beside it; late readings of the old epoch
    still fill it."""
    g = GapTracker()
    for seq in (1, 2, 3, 50, 100):
        g.observe("gw", seq, ts(seq), now=0.0, epoch=E1)
    g.observe_all("gw", [1, 2, 3], [ts(201), ts(202), ts(203)], now=0.0, epoch=E2)
    g.observe_all("gw", [6, 7], [ts(206), ts(207)], now=0.0, epoch=E2)
    assert spans(g) == [(E1, 4, 49), (E1, 51, 99), (E2, 4, 5)]
    assert g.high("gw", E2) == 7
    assert g.high("gw", E1) == 100
    g.observe("gw", 50 - 1, ts(49), now=0.0, epoch=E1)  # a late reading of the old epoch
    assert spans(g) == [(E1, 4, 48), (E1, 51, 99), (E2, 4, 5)]


def test_a_seed_of_one_epoch_does_not_hide_the_gaps_of_another() -> None:
    """Seeded with epoch E1 at 1000 (a warm-up), readings of a new epoch E2 from 1 on are
    tracked on their own: a gap at 3..4 is suspected, not taken for history below 1000."""
    g = GapTracker()
    g.seed("gw", E1, 1000, ts(1000))
    for seq in (1, 2, 5):
        g.observe("gw", seq, ts(2000 + seq), now=0.0, epoch=E2)
    assert spans(g) == [(E2, 3, 4)]


async def test_gaps_are_confirmed_within_their_epoch() -> None:
    """Confirmation asks storage for the gap's own epoch: seq 3..4 of the new epoch are
    missing even though the old epoch stored seqs 3..4."""
    g = GapTracker()
    g.observe_all("gw", [1, 2, 3, 4, 5], [ts(s) for s in range(1, 6)], now=0.0, epoch=E1)
    g.observe_all("gw", [1, 2, 5], [ts(11), ts(12), ts(15)], now=0.0, epoch=E2)
    held = {E1: {1, 2, 3, 4, 5}, E2: {1, 2, 5}}

    async def count(
        gw: str, epoch: str | None, first: int, last: int, lo: datetime, hi: datetime
    ) -> int:
        assert epoch is not None
        return len([s for s in held[epoch] if first <= s <= last])

    await g.confirm(count, now=11.0, grace_s=10.0)
    assert [(x["epoch"], x["missing"]) for x in g.report()["gw"]] == [(E2, 2)]
    assert g.missing() == 2


def test_epochs_per_gateway_are_bounded() -> None:
    """A gateway changing its epoch with every message keeps at most MAX_EPOCHS tracks; the
    oldest goes with its gaps (counted as dropped)."""
    g = GapTracker()
    for k in range(MAX_EPOCHS + 3):
        epoch = f"{k:016x}"
        g.observe_all("gw", [1, 3], [ts(1), ts(3)], now=0.0, epoch=epoch)
    assert len(spans(g)) == MAX_EPOCHS
    assert g.dropped == 3
    assert g.high("gw", f"{0:016x}") is None


async def test_confirmed_gaps_become_seqgaps_points_when_they_change() -> None:
    """A confirmed gap is summed per gateway and written once; unchanged, nothing is written
    (but a refresh writes it again); filled, the gateway's point says missing=0."""
    from processor.state.storage import seqgap_lines

    g = GapTracker()
    for seq in (1, 2, 6):
        g.observe("gw", seq, ts(seq), now=0.0)

    async def none_stored(*_: object) -> int:
        return 0

    assert g.confirmed() == {}  # suspected only
    await g.confirm(none_stored, now=10.0, grace_s=1.0)
    now = g.confirmed()
    assert now == {"gw": (3, 1, 3, 5, None)}
    lines = seqgap_lines("bridge-1", now, {}, 7)
    assert lines == ["seqgaps,bridge=bridge-1,gateway_id=gw missing=3i,gaps=1i,first=3i,last=5i 7"]
    assert seqgap_lines("bridge-1", now, now, 8) == []
    assert len(seqgap_lines("bridge-1", now, now, 8, refresh=True)) == 1
    for seq in (3, 4, 5):
        g.observe("gw", seq, ts(seq), now=11.0)
    assert seqgap_lines("b", g.confirmed(), now, 9) == [
        "seqgaps,bridge=b,gateway_id=gw missing=0i,gaps=0i,first=0i,last=0i 9"
    ]


async def test_a_gap_across_a_clock_stepped_back_is_looked_for_between_both_neighbours() -> None:
    """The gateway's clock stepped back an hour between seq 2 and 5 (NTP after a fast clock):
    3 and 4 were stored by another bridge, stamped between the two readings' ts whichever
    order they are in, so the gap is not reported."""
    g = GapTracker()
    g.observe("gw", 1, ts(3600), now=0.0)
    g.observe("gw", 2, ts(3601), now=0.0)
    g.observe("gw", 5, ts(10), now=0.0)
    stored = {3: ts(3602), 4: ts(9)}

    async def count(
        gw: str, epoch: str | None, first: int, last: int, lo: datetime, hi: datetime
    ) -> int:
        lo_ns, hi_ns = ts_ns(lo), ts_ns(hi)
        return len([s for s, at in stored.items() if first <= s <= last and lo_ns <= at <= hi_ns])

    await g.confirm(count, now=11.0, grace_s=10.0)
    assert g.report() == {}
    assert g.missing() == 0
