"""Exact drop accounting when the budget deletes rows of a batch that awaits its PUBACK: every
reading is delivered, still held, or counted as dropped exactly once, and which seqs were
dropped is listed. The outbox alone, then the publisher against a fake client whose PUBACKs the
test answers (the real broker path is tests/system/test_faults_more.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import orjson
import pytest
from typer.testing import CliRunner

from edge_agent.budget import Budget
from edge_agent.cli import app
from edge_agent.outbox import Outbox
from edge_agent.outbox_cli import render_stats
from edge_agent.publisher import Counters, Publisher
from edge_agent.settings import EdgeSettings
from processor.outputs.acks import ack_payload
from telemetry_common.mqtt import AsyncMqttClient, PublishLostError, PublishRejectedError
from tests.support.fake_mqtt import FakeBroker, until
from tests.support.outbox_readings import energy, other, pending_seqs


def listed(box: Outbox) -> set[int]:
    return {s for a, b in box.dropped_runs(1_000_000) for s in range(a, b + 1)}


def full_box(tmp_path: Path, **budget: int) -> tuple[Outbox, list[int]]:
    """An outbox of max_rows=6 holding six energy readings, all claimed as one batch."""
    box = Outbox(tmp_path / "o.sqlite3", Budget(max_rows=6, **budget))
    seqs = box.append([energy(i) for i in range(1, 7)])
    assert [r.seq for r in box.claim(box.oldest(100, 1 << 20))] == seqs
    return box, seqs


# -- the outbox ------------------------------------------------------------------------------


def test_rows_dropped_in_flight_then_acknowledged_are_not_counted(tmp_path: Path) -> None:
    """The budget drops the two oldest rows of a batch in flight (after the new non-energy
    reading): they leave the outbox, but only the non-energy one is counted. The PUBACK then
    says the two were delivered: they are never counted nor listed."""
    box, (e1, e2, *rest) = full_box(tmp_path)
    with box:
        n1, e7, e8 = box.append([other(1), energy(7), energy(8)])
        assert pending_seqs(box) == [*rest, e7, e8]
        st = box.stats()
        assert (st.dropped, st.dropped_in_flight) == ({"budget_non_energy": 1}, 2)
        assert box.delete([e1, e2, *rest]) == len(rest)
        st = box.stats()
        assert (st.dropped, st.dropped_in_flight) == ({"budget_non_energy": 1}, 0)
        assert listed(box) == {n1}
        assert pending_seqs(box) == [e7, e8]


@pytest.mark.parametrize("outcome", ["no PUBACK", "refused"])
def test_rows_dropped_in_flight_then_not_acknowledged_are_counted_once(
    tmp_path: Path, outcome: str
) -> None:
    """If the batch gets no PUBACK (its other rows stay) or is refused (its other rows are
    parked), the rows the budget dropped from it were not delivered: counted once, under the
    reason the budget gave (budget_energy), and listed; ending the batch again counts nothing."""
    box, (e1, e2, *rest) = full_box(tmp_path)
    with box:
        n1, e7, e8 = box.append([other(1), energy(7), energy(8)])
        if outcome == "no PUBACK":
            assert box.release([e1, e2, *rest]) == 2
            assert pending_seqs(box) == [*rest, e7, e8]
        else:
            assert box.park([e1, e2, *rest], "Not authorized") == len(rest)
            assert [s for s, _, _ in box.parked_rows(10)] == rest
            assert pending_seqs(box) == [e7, e8]
        assert box.release([e1, e2, *rest]) == 0
        st = box.stats()
        assert (st.dropped, st.dropped_in_flight) == (
            {"budget_energy": 2, "budget_non_energy": 1},
            0,
        )
        assert listed(box) == {e1, e2, n1}


def test_nothing_in_flight_drops_are_counted_and_listed_at_once(tmp_path: Path) -> None:
    """With no batch in flight the policy counts at once, as before, and lists each dropped
    seq; runs of consecutive seqs merge whatever their reason (the energy drops fill the holes
    the non-energy drops left)."""
    with Outbox(tmp_path / "o.sqlite3", Budget(max_rows=3)) as box:
        seqs = box.append([energy(1), other(1), energy(2), other(2), energy(3), other(3)])
        assert box.stats().dropped == {"budget_non_energy": 3}
        assert box.dropped_runs(10) == [(seqs[5], seqs[5]), (seqs[3], seqs[3]), (2, 2)]
        box.append([energy(4), energy(5), energy(6)])
        st = box.stats()
        assert st.dropped == {"budget_non_energy": 3, "budget_energy": 3}
        assert box.dropped_runs(10) == [(1, 6)]
        assert (st.dropped_runs, st.newest_dropped, st.dropped_in_flight) == (1, (1, 6), 0)
        assert "1 runs, newest 1..6" in render_stats(st)


def test_rows_dropped_between_read_and_claim_are_not_sent(tmp_path: Path) -> None:
    """A batch read before the budget dropped some of its rows: ``claim`` returns only the
    rows still pending (the dropped ones were counted; sending them could deliver a reading
    already counted as dropped), and claims no row twice."""
    with Outbox(tmp_path / "o.sqlite3", Budget(max_rows=4)) as box:
        box.append([energy(1), energy(2), energy(3), energy(4)])
        rows = box.oldest(100, 1 << 20)
        box.append([energy(5), energy(6)])  # drops seq 1 and 2, not in flight yet
        assert box.stats().dropped == {"budget_energy": 2}
        claimed = box.claim(rows)
        assert [r.seq for r in claimed] == [3, 4]
        assert box.claim(rows) == []
        box.delete([r.seq for r in claimed])
        assert box.stats().dropped == {"budget_energy": 2}
        assert listed(box) == {1, 2}


def test_a_crash_while_in_flight_counts_the_drops_when_the_next_publisher_starts(
    tmp_path: Path,
) -> None:
    """The process ends (as by SIGKILL) between the drop and the PUBACK: the deferred drops are
    durable. Another process opening the outbox (``outbox stats``) only shows them as in
    flight; the next agent's publisher counts them when it starts (its PUBACK can no longer
    come: a documented, rare over-count if the broker did have the batch)."""
    box, (e1, e2, *_) = full_box(tmp_path)
    box.append([energy(7), energy(8)])
    box.close()  # committed, never resolved: what SIGKILL leaves
    with Outbox(tmp_path / "o.sqlite3") as cli:
        st = cli.stats()
        assert (st.dropped, st.dropped_in_flight) == ({}, 2)
        assert "+2 in flight" in render_stats(st)
    with Outbox(tmp_path / "o.sqlite3") as agent:
        assert agent.settle_in_flight() == 2
        assert agent.settle_in_flight() == 0
        st = agent.stats()
        assert (st.dropped, st.dropped_in_flight) == ({"budget_energy": 2}, 0)
        assert listed(agent) == {e1, e2}


def test_listed_runs_are_bounded_and_the_rest_is_counted_unlisted(tmp_path: Path) -> None:
    """Beyond max_dropped_runs the oldest runs are forgotten (down to 90%): listed + unlisted
    still equals the dropped count, and the newest runs stay listed."""
    with Outbox(tmp_path / "o.sqlite3", Budget(max_rows=30, max_dropped_runs=10)) as box:
        for i in range(25):  # from the 16th pair on, each drops one non-energy reading
            box.append([energy(i), other(i)])
        st = box.stats()
        dropped = sorted(set(range(1, st.last_seq_assigned + 1)) - set(pending_seqs(box)))
        assert dropped == list(range(2, 41, 2))  # 20 runs of one seq
        assert st.dropped == {"budget_non_energy": 20}
        assert st.dropped_runs == len(listed(box)) <= 10
        assert sorted(listed(box)) == dropped[st.dropped_unlisted :]
        assert st.dropped_unlisted > 0


def test_an_older_outbox_is_migrated_with_its_drops_unlisted(tmp_path: Path) -> None:
    """An outbox written before drops were listed keeps its counts; the readings it dropped
    (all but disk_full_refused, which never had a seq) are reported as not listed."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, captured_at REAL NOT NULL,
                                 body BLOB NOT NULL, energy INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), rows INTEGER NOT NULL,
                                 bytes INTEGER NOT NULL);
            INSERT INTO totals VALUES (1, 0, 0);
            CREATE TABLE dropped (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
            INSERT INTO dropped VALUES ('budget_energy', 7), ('disk_full_refused', 5);
            """
        )
    db.close()
    with Outbox(path, Budget(max_rows=1)) as box:
        st = box.stats()
        assert (st.dropped_unlisted, st.dropped_runs) == (7, 0)
        box.append([energy(1), energy(2)])
        st = box.stats()
        assert (st.dropped_unlisted, st.dropped_runs, st.newest_dropped) == (7, 1, (1, 1))


def test_outbox_dropped_cli_lists_runs_newest_first(tmp_path: Path) -> None:
    """``edge-agent outbox dropped`` prints the runs of dropped seqs, newest first, as text or
    JSON lines."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path, Budget(max_rows=2)) as box:
        box.append([energy(1), other(1), energy(2), energy(3), other(2)])  # drops 2, 5, 1
    runner = CliRunner()
    done = runner.invoke(app, ["outbox", "dropped", "--path", str(path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == ["5", "1..2"]
    done = runner.invoke(app, ["outbox", "dropped", "--path", str(path), "--json", "-n", "1"])
    assert [orjson.loads(line) for line in done.output.splitlines()] == [
        {"first_seq": 5, "last_seq": 5}
    ]


# -- the publisher ---------------------------------------------------------------------------


class Harness:
    def __init__(self, box: Outbox, broker: FakeBroker, publisher: Publisher) -> None:
        self.box, self.broker, self.publisher = box, broker, publisher
        self.confirmed: set[int] = set()

    async def confirm_acknowledged(self) -> None:
        """With ``delete_after = "stored"``: the bridges say every PUBACKed seq is stored."""
        if self.publisher._require_stored:
            seqs = {
                s for seqs, f in self.broker.sent if f.done() and not f.exception() for s in seqs
            }
            new = seqs - self.confirmed
            if new:
                self.confirmed |= new
                await self.publisher.confirm(ack_payload(self.box.epoch, new))

    async def ack_all(self) -> None:
        """Acknowledge every batch until the outbox is empty and the publisher has counted
        every acknowledged batch (for at most 10 s): it deletes a batch's rows in a worker
        thread and counts them when that returns, so an empty outbox alone can be seen first."""
        for _ in range(1000):
            for _, fut in self.broker.sent:
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0)
            await self.confirm_acknowledged()
            acked = sum(len(seqs) for seqs, f in self.broker.sent if f.done() and not f.exception())
            settled = all(f.done() for _, f in self.broker.sent)
            if settled and not self.box.pending() and self.publisher.counters.published == acked:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the outbox did not empty, or its PUBACKs were not all counted")


@pytest.fixture(params=["puback", "stored"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """A publisher (no linger, no pacing) over a 6-row outbox whose six energy readings are
    one batch in flight, unanswered; rows deleted after the PUBACK, or after the stored
    acknowledgement (the harness sends it for every PUBACKed batch)."""
    settings = EdgeSettings(
        gateway_id="gw-1",
        outbox_path=tmp_path / "o.sqlite3",
        delete_after=request.param,
        linger_s=0,
        publish_timeout_s=10,
        reconnect_max_s=1,
    )
    box = Outbox(settings.outbox_path, Budget(max_rows=6))
    box.append([energy(i) for i in range(1, 7)])
    broker = FakeBroker()
    client = cast(AsyncMqttClient, broker)
    publisher = Publisher(settings, box, client, Counters())
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await until("the first batch is sent", lambda: len(broker.sent) == 1)
        assert broker.sent[0][0] == [1, 2, 3, 4, 5, 6]
        yield Harness(box, broker, publisher)
        stop.set()
        publisher.notify()
        async with asyncio.timeout(10):
            await task
    finally:
        task.cancel()
        box.close()


async def test_publisher_puback_after_an_in_flight_drop_counts_nothing_twice(
    harness: Harness,
) -> None:
    """Readings arrive while the first batch is in flight at the budget: the new non-energy one
    is dropped and counted; the two oldest energy rows (in the batch) are dropped uncounted;
    the PUBACK comes, and in the end dropped == accepted - delivered exactly."""
    h = harness
    await asyncio.to_thread(h.box.append, [other(1), energy(7), energy(8)])
    h.publisher.notify()
    assert h.box.stats().dropped_in_flight == 2
    h.broker.answer(0)
    await h.ack_all()
    st = h.box.stats()
    delivered = {s for seqs, fut in h.broker.sent if not fut.exception() for s in seqs}
    assert (st.dropped, st.dropped_in_flight) == ({"budget_non_energy": 1}, 0)
    assert delivered == {1, 2, 3, 4, 5, 6, 8, 9}
    assert listed(h.box) == {7}
    assert h.publisher.counters.published == 8


async def test_publisher_lost_puback_after_an_in_flight_drop_counts_them_once(
    harness: Harness,
) -> None:
    """The same, but the connection is lost before the PUBACK: the batch's remaining rows are
    sent again and delivered, and the two rows dropped from it are counted once, as
    budget_energy, and listed."""
    h = harness
    await asyncio.to_thread(h.box.append, [other(1), energy(7), energy(8)])
    h.publisher.notify()
    h.broker.answer(0, PublishLostError("t"))
    await until("the batch is released", lambda: h.box.stats().dropped_in_flight == 0)
    await h.ack_all()
    st = h.box.stats()
    delivered = {s for seqs, fut in h.broker.sent[1:] if not fut.exception() for s in seqs}
    assert st.dropped == {"budget_non_energy": 1, "budget_energy": 2}
    assert delivered == {3, 4, 5, 6, 8, 9}
    assert listed(h.box) == {1, 2, 7}


async def test_publisher_refused_batch_after_an_in_flight_drop_parks_and_counts(
    harness: Harness,
) -> None:
    """A refused batch (not authorized) is parked; the two rows the budget dropped from it are
    not parked (they are gone) but counted once as budget_energy."""
    h = harness
    await asyncio.to_thread(h.box.append, [other(1), energy(7), energy(8)])
    h.publisher.notify()
    h.broker.answer(0, PublishRejectedError("t", 0x87, "Not authorized"))
    await until("the batch is parked", lambda: h.box.stats().parked == 4)
    await h.ack_all()
    st = h.box.stats()
    assert (st.dropped, st.dropped_in_flight) == ({"budget_non_energy": 1, "budget_energy": 2}, 0)
    assert [s for s, _, _ in h.box.parked_rows(10)] == [3, 4, 5, 6]
    assert listed(h.box) == {1, 2, 7}
