"""``delete_after = "stored"``: a PUBACKed batch stays in the outbox until the bridges' stored
acknowledgement covers it; it is sent again when none comes in time; at most
``max_unconfirmed`` readings wait unconfirmed. Against a client whose PUBACKs the test answers
(the real broker and bridge: tests/integration/edge_agent/test_stored_acks.py, tests/system)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from edge_agent.budget import Budget
from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters, Publisher
from edge_agent.settings import EdgeSettings
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.stored_ack import decode as parse_ack
from telemetry_common.stored_ack import encode as ack_payload
from tests.support.fake_mqtt import FakeBroker, until
from tests.support.outbox_readings import energy


@dataclass
class Rig:
    box: Outbox
    broker: FakeBroker
    publisher: Publisher
    stop: asyncio.Event

    @property
    def epoch(self) -> str:
        return self.box.epoch

    def puback_all(self) -> None:
        for _, fut in self.broker.sent:
            if not fut.done():
                fut.set_result(None)

    def sent_seqs(self) -> list[list[int]]:
        return [seqs for seqs, _ in self.broker.sent]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A publisher of 4-reading batches, at most 8 readings unconfirmed, a 0.5 s timeout."""
    settings = EdgeSettings(
        gateway_id="gw-1",
        outbox_path=tmp_path / "o.sqlite3",
        linger_s=0,
        batch_max_readings=4,
        max_unconfirmed=8,
        stored_timeout_s=0.5,
        reconnect_max_s=1,
        publish_timeout_s=2,  # bounds the teardown: a PUBACK the test never gives
    )
    box = Outbox(settings.outbox_path, Budget(max_rows=100))
    broker = FakeBroker()
    publisher = Publisher(settings, box, cast(AsyncMqttClient, broker), Counters())
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        yield Rig(box, broker, publisher, stop)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        box.close()


async def test_rows_stay_until_the_stored_acknowledgement_covers_them(rig: Rig) -> None:
    """PUBACK alone deletes nothing; a partial acknowledgement deletes nothing of a batch; the
    rest of it deletes the whole batch."""
    rig.box.append([energy(i) for i in range(1, 5)])
    rig.publisher.notify()
    await until("the batch is sent", lambda: rig.sent_seqs() == [[1, 2, 3, 4]])
    rig.puback_all()
    await until("the PUBACK is seen", lambda: rig.publisher.counters.published == 4)
    assert rig.box.pending() == 4
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2]))
    assert (rig.box.pending(), rig.publisher.unconfirmed) == (4, 2)
    await rig.publisher.confirm(ack_payload(rig.epoch, [3, 4, 5]))
    assert (rig.box.pending(), rig.publisher.unconfirmed) == (0, 0)
    assert rig.publisher.counters.confirmed == 4
    assert len(rig.broker.sent) == 1


async def test_an_acknowledgement_of_another_epoch_or_malformed_is_ignored(rig: Rig) -> None:
    rig.box.append([energy(1)])
    rig.publisher.notify()
    await until("the batch is sent", lambda: len(rig.broker.sent) == 1)
    rig.puback_all()
    await until("the PUBACK is seen", lambda: rig.publisher.counters.published == 1)
    await rig.publisher.confirm(ack_payload("ffffffffffffffff", [1]))
    await rig.publisher.confirm(b'{"epoch": null, "seqs": [[2, 1]]}')
    await rig.publisher.confirm(b"garbage")
    assert rig.box.pending() == 1
    await rig.publisher.confirm(ack_payload(rig.epoch, [1]))
    assert rig.box.pending() == 0


async def test_unconfirmed_readings_are_bounded_by_the_window(rig: Rig) -> None:
    """12 readings, batches of 4, window 8: the third batch waits for an acknowledgement."""
    rig.box.append([energy(i) for i in range(1, 13)])
    rig.publisher.notify()
    await until("two batches sent", lambda: len(rig.broker.sent) == 2)
    rig.puback_all()
    await until("both PUBACKed", lambda: rig.publisher.counters.published == 8)
    await asyncio.sleep(0.2)
    assert len(rig.broker.sent) == 2
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2, 3, 4]))
    await until("the third batch goes", lambda: len(rig.broker.sent) == 3)
    assert rig.sent_seqs()[2] == [9, 10, 11, 12]


async def test_unconfirmed_batches_are_sent_again_after_the_timeout(rig: Rig) -> None:
    """No acknowledgement within the timeout: everything unconfirmed goes again (the session
    restarts from the oldest pending row); an acknowledgement then ends it."""
    rig.box.append([energy(i) for i in range(1, 5)])
    rig.publisher.notify()
    await until("the batch is sent", lambda: len(rig.broker.sent) == 1)
    rig.puback_all()
    await until("sent again", lambda: len(rig.broker.sent) == 2)
    assert rig.sent_seqs() == [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert rig.publisher.counters.stored_timeouts == 1
    rig.puback_all()
    await until("PUBACKed again", lambda: rig.publisher.counters.published == 8)
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2, 3, 4]))
    assert rig.box.pending() == 0


async def test_a_late_acknowledgement_deletes_rows_no_longer_in_flight(rig: Rig) -> None:
    """The bridges stored the batch but their acknowledgement came after the publisher gave
    it up (its rows released, waiting to go again): it still deletes them."""
    rig.box.append([energy(i) for i in range(1, 5)])
    rig.publisher.notify()
    await until("the batch is sent", lambda: len(rig.broker.sent) == 1)
    rig.broker.connected = False  # the session ends; the rows are released, not sent again
    rig.puback_all()
    await until("released", lambda: rig.publisher.unconfirmed == 0 and not rig.box._in_flight)
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2, 3, 4]))
    assert rig.box.pending() == 0
    assert rig.publisher.counters.confirmed == 4


async def test_a_budget_drop_of_an_unconfirmed_row_counts_only_if_it_is_not_stored(
    tmp_path: Path,
) -> None:
    """The budget drops rows of a batch awaiting its stored acknowledgement: acknowledged, they
    were delivered and are not counted."""
    settings = EdgeSettings(
        gateway_id="gw-1", outbox_path=tmp_path / "o.sqlite3", linger_s=0, stored_timeout_s=30
    )
    box = Outbox(settings.outbox_path, Budget(max_rows=4))
    broker = FakeBroker()
    publisher = Publisher(settings, box, cast(AsyncMqttClient, broker), Counters())
    task = asyncio.create_task(publisher.run())
    try:
        box.append([energy(i) for i in range(1, 5)])
        publisher.notify()
        await until("sent", lambda: len(broker.sent) == 1)
        broker.answer(0)
        await until("PUBACKed", lambda: publisher.counters.published == 4)
        box.append([energy(5), energy(6)])  # over the budget: the two oldest rows go
        assert box.stats().dropped_in_flight == 2
        await publisher.confirm(ack_payload(box.epoch, [1, 2, 3, 4]))
        st = box.stats()
        assert (st.dropped, st.dropped_in_flight) == ({}, 0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        box.close()


@pytest.mark.parametrize(
    "payload",
    [b"{}", b'{"epoch": 1, "seqs": []}', b'{"epoch": null, "seqs": [[1]]}', b'{"seqs": [[-1, 2]]}'],
)
def test_malformed_acknowledgements_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a stored acknowledgement"):
        parse_ack(payload)


async def test_a_batch_confirmed_out_of_order_is_deleted_and_only_the_other_goes_again(
    rig: Rig,
) -> None:
    """Two batches (another bridge stored the second first): the second is deleted at once;
    the first, never acknowledged, is the only one sent again after the timeout."""
    rig.box.append([energy(i) for i in range(1, 9)])
    rig.publisher.notify()
    await until("two batches sent", lambda: len(rig.broker.sent) == 2)
    rig.puback_all()
    await until("both PUBACKed", lambda: rig.publisher.counters.published == 8)
    await rig.publisher.confirm(ack_payload(rig.epoch, [5, 6, 7, 8]))
    assert sorted(r.seq for r in rig.box.oldest(100, 1 << 20)) == [1, 2, 3, 4]
    await until("sent again", lambda: len(rig.broker.sent) == 3)
    assert rig.sent_seqs()[2] == [1, 2, 3, 4]


async def test_the_window_is_a_bound_not_a_threshold(tmp_path: Path) -> None:
    """MAX_UNCONFIRMED 6 with batches of 4: the second batch is cut to the 2 readings left of
    the window, never 8 unconfirmed."""
    settings = EdgeSettings(
        gateway_id="gw-1",
        outbox_path=tmp_path / "o.sqlite3",
        linger_s=0,
        batch_max_readings=4,
        max_unconfirmed=6,
        stored_timeout_s=30,
        publish_timeout_s=2,  # bounds the teardown: a PUBACK the test never gives
    )
    box = Outbox(settings.outbox_path, Budget(max_rows=100))
    broker = FakeBroker()
    publisher = Publisher(settings, box, cast(AsyncMqttClient, broker), Counters())
    task = asyncio.create_task(publisher.run())
    try:
        box.append([energy(i) for i in range(1, 13)])
        publisher.notify()
        await until("two batches sent", lambda: len(broker.sent) == 2)
        await asyncio.sleep(0.2)
        assert [seqs for seqs, _ in broker.sent] == [[1, 2, 3, 4], [5, 6]]
        assert publisher.unconfirmed == 6
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        box.close()


async def test_a_confirmed_batch_the_outbox_cannot_delete_is_sent_again(rig: Rig) -> None:
    """The delete after a stored acknowledgement fails (disk full): the batch's claim ends, so
    it goes again and is deleted by the next acknowledgement, instead of staying claimed."""
    rig.box.append([energy(i) for i in range(1, 5)])
    rig.publisher.notify()
    await until("sent", lambda: len(rig.broker.sent) == 1)
    rig.puback_all()
    await until("PUBACKed", lambda: rig.publisher.counters.published == 4)
    real = rig.box.delete

    def full(seqs: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    rig.box.delete = full  # type: ignore[method-assign]
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2, 3, 4]))
    rig.box.delete = real  # type: ignore[method-assign]
    await until("sent again", lambda: len(rig.broker.sent) == 2)
    rig.puback_all()
    await until("PUBACKed again", lambda: rig.publisher.counters.published == 8)
    await rig.publisher.confirm(ack_payload(rig.epoch, [1, 2, 3, 4]))
    assert rig.box.pending() == 0


async def _slow_cloud(
    tmp_path: Path, lag: Callable[[int, list[int], int], float | None], batches: int
) -> tuple[Publisher, list[list[int]], Outbox]:
    """A gateway capturing a 4-reading batch every 0.1 s for ``batches`` batches, against a cloud
    whose broker PUBACKs at once and whose bridges acknowledge the i-th batch sent (``seqs``,
    sent for the n-th time) ``lag(i, seqs, n)`` seconds after its PUBACK (None: never). Runs
    until the outbox is empty; returns the publisher, what was sent, and the outbox."""
    settings = EdgeSettings(
        gateway_id="gw-1",
        outbox_path=tmp_path / "o.sqlite3",
        linger_s=0,
        batch_max_readings=4,
        max_unconfirmed=400,
        stored_timeout_s=1.0,
        reconnect_max_s=1,
        publish_timeout_s=2,
    )
    box = Outbox(settings.outbox_path, Budget(max_rows=1000))
    broker = FakeBroker()
    publisher = Publisher(settings, box, cast(AsyncMqttClient, broker), Counters())
    task = asyncio.create_task(publisher.run())
    acks: set[asyncio.Task[None]] = set()

    async def ack_later(delay: float, seqs: list[int]) -> None:
        await asyncio.sleep(delay)
        await publisher.confirm(ack_payload(box.epoch, seqs))

    async def cloud() -> None:
        times: dict[tuple[int, ...], int] = {}
        seen = 0
        while True:
            for i in range(seen, len(broker.sent)):
                seqs, fut = broker.sent[i]
                fut.set_result(None)
                n = times[tuple(seqs)] = times.get(tuple(seqs), 0) + 1
                delay = lag(i, seqs, n)
                if delay is not None:
                    t = asyncio.create_task(ack_later(delay, seqs))
                    acks.add(t)
                    t.add_done_callback(acks.discard)
            seen = len(broker.sent)
            await asyncio.sleep(0.005)

    answering = asyncio.create_task(cloud())
    try:
        for b in range(batches):
            box.append([energy(4 * b + k) for k in range(1, 5)])
            publisher.notify()
            await asyncio.sleep(0.1)
        for _ in range(1500):  # at most 15 s
            if box.pending() == 0:
                break
            await asyncio.sleep(0.01)
        return publisher, [seqs for seqs, _ in broker.sent], box
    finally:
        for t in (task, answering, *acks):
            t.cancel()
        await asyncio.gather(task, answering, *acks, return_exceptions=True)


async def test_a_slow_but_progressing_cloud_gets_nothing_twice(tmp_path: Path) -> None:
    """Acknowledgements in publish order, each later than the last (a queue building up in the
    broker: the 20th batch waits 3.1 s for it, three times STORED_TIMEOUT_S of 1 s), but one
    arrives every 0.25 s: that is queueing, not loss; nothing is sent again."""
    publisher, sent, box = await _slow_cloud(tmp_path, lambda i, seqs, n: 0.2 + 0.15 * i, 20)
    try:
        assert box.pending() == 0
        flat = [q for seqs in sent for q in seqs]
        assert sorted(flat) == list(range(1, 81))  # each reading sent exactly once
        assert publisher.counters.stored_timeouts == 0
        assert publisher.counters.stored_holes == 0
    finally:
        box.close()


async def test_only_the_batch_the_cloud_skipped_is_sent_again(tmp_path: Path) -> None:
    """The broker drops one batch (seqs 9-12); the batches after it are acknowledged within
    0.1 s: STORED_TIMEOUT_S after a later batch was confirmed, only the missing one goes again,
    without ending the session (no stored timeout)."""

    def lag(i: int, seqs: list[int], n: int) -> float | None:
        return None if seqs == [9, 10, 11, 12] and n == 1 else 0.1

    publisher, sent, box = await _slow_cloud(tmp_path, lag, 30)
    try:
        assert box.pending() == 0
        assert sent.count([9, 10, 11, 12]) == 2
        flat = [q for seqs in sent for q in seqs]
        assert sorted(flat) == sorted([*range(1, 121), 9, 10, 11, 12])
        assert (publisher.counters.stored_holes, publisher.counters.stored_timeouts) == (1, 0)
    finally:
        box.close()


async def test_after_an_outage_the_backlog_drain_sends_nothing_a_third_time(
    tmp_path: Path,
) -> None:
    """The cloud stores nothing for 2.5 s (a bridge restarting), then drains what queued in the
    broker in order, slowly: one stored timeout sends the unconfirmed readings again once; the
    drain's acknowledgements (each batch waiting longer than the timeout, but one every few
    tenths of a second) send nothing a third time."""
    start = asyncio.get_running_loop().time()

    def lag(i: int, seqs: list[int], n: int) -> float | None:
        now = asyncio.get_running_loop().time() - start
        return max(0.05, 2.5 - now) + 0.05 * i  # the queue drains from 2.5 s on, in order

    publisher, sent, box = await _slow_cloud(tmp_path, lag, 30)
    try:
        assert box.pending() == 0
        flat = [q for seqs in sent for q in seqs]
        assert max(flat.count(q) for q in range(1, 121)) <= 2
        assert publisher.counters.stored_timeouts == 1
    finally:
        box.close()
