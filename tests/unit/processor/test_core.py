"""The processor's steps against a recording writer (pure batching logic): how a batch is
prepared, written in bounded requests and retried."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson

from processor.core import Processor
from processor.lineproto import ts_ns
from processor.metrics import Metrics
from processor.outputs.acks import StoredAcks
from processor.outputs.deadletters import DeadLetters
from processor.outputs.influx import InfluxOutput
from processor.outputs.live import LiveFeed
from processor.prepare import Preparer
from processor.state import State
from processor.state.bindings import Bindings
from processor.validate import TsWindow
from telemetry_common.influx_write import WriteRejectedError, WriteUnavailableError
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.topics import Topics


class RecordingWriter:
    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[int] = []
        #: The lines written to retention policy keep (registry, newest-stored state).
        self.keep: list[str] = []
        self.fail_first = fail_first

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise WriteUnavailableError(503, "busy")
        if rp is None:
            self.requests.append(len(lines))
        else:
            self.keep.extend(lines)

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def make_processor(
    writer: RecordingWriter,
    bindings: Bindings | None = None,
    *,
    max_lines: int = 10_000,
    max_backoff_s: float = 30.0,
) -> Processor:
    """A processor on ``writer``; MQTT is never touched (no dead letters, no live flush)."""
    unused_mqtt = cast(AsyncMqttClient, object())
    state = State(bindings=bindings or Bindings())
    metrics = Metrics()
    return Processor(
        state,
        # Any ts these tests send is accepted (they pin batching, not the ts window).
        Preparer(state.bindings, Topics(), TsWindow(timedelta(days=1), timedelta(days=36_500))),
        InfluxOutput(writer, metrics, max_lines=max_lines, max_backoff_s=max_backoff_s),
        DeadLetters(unused_mqtt, Topics(), metrics),
        LiveFeed(unused_mqtt, Topics(), metrics, 1.0),
        metrics,
    )


def message(gateway: str, first_seq: int, n: int) -> Received:
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    readings = [
        {
            "charger_id": f"cp-{i % 50}",
            "seq": first_seq + i,
            "ts": (t0 + timedelta(milliseconds=i)).isoformat(),
            "values": {"power_w": float(i)},
        }
        for i in range(n)
    ]
    payload = orjson.dumps(
        {"schema": "charger-telemetry/1", "gateway_id": gateway, "readings": readings}
    )
    return Received(f"chargers/v1/{gateway}/readings", payload, 1, first_seq, 1)


async def test_a_large_backlog_is_written_in_bounded_requests() -> None:
    """12 messages of 1,000 readings become requests of at most 5,000 lines (evenly split), all
    written: a backlog never turns into one request InfluxDB would drop (and the bridge retry
    forever)."""
    writer = RecordingWriter()
    p = make_processor(writer, max_lines=5_000)
    await p.commit(await p.prepare([message("gw-1", k * 1000 + 1, 1000) for k in range(12)]))
    assert writer.requests == [4000, 4000, 4000]
    assert len(p.state.lvc) == 50


async def test_a_batch_writes_the_newest_stored_state_it_advanced() -> None:
    """One point per charger and one per gateway epoch, tagged with the bridge, at the state's
    fixed time; a batch that advances nothing (the same readings again) writes none."""
    writer = RecordingWriter()
    p = make_processor(writer)
    sent = message("gw-1", 1001, 100)
    await p.commit(await p.prepare([sent]))
    chargers = [x for x in writer.keep if x.startswith("newest_chargers,")]
    gateways = [x for x in writer.keep if x.startswith("newest_gateways,")]
    assert len(chargers) == 50
    assert all(x.endswith(" 0") and ",bridge=" in x for x in writer.keep)
    assert len(gateways) == 1
    assert "high=1100i" in gateways[0]
    assert "gateway_id=gw-1" in gateways[0]
    writer.keep.clear()
    await p.commit(await p.prepare([sent]))
    assert writer.keep == []


async def test_unavailable_influx_is_retried_until_it_takes_the_write() -> None:
    """Transient failures are retried (capped backoff) and the batch is written once it works."""
    writer = RecordingWriter(fail_first=2)
    p = make_processor(writer, max_backoff_s=0.01)
    await p.commit(await p.prepare([message("gw-1", 1, 10)]))
    assert writer.requests == [10]


async def test_prepare_hands_the_loop_back_and_prepares_the_same_batch() -> None:
    """prepare yields to the event loop between slices of payload (a write's answer is not
    held up by the whole batch) and yields the same points, in the same order, whatever the
    slice size; a bad message in a slice is dead-lettered either way."""
    msgs = [message("gw-1", k * 100 + 1, 100) for k in range(6)]
    bad = Received("chargers/v1/gw-1/readings", b"{not json", 1, 999, 1)
    msgs.insert(3, bad)
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(count_ticks())
    await asyncio.sleep(0)
    ticks = 0
    preparer = make_processor(RecordingWriter()).preparer
    fast = await preparer.prepare(msgs, slice_bytes=1)
    ticker.cancel()
    plain = await preparer.prepare(msgs, slice_bytes=1 << 30)
    assert ticks == len(msgs) - 1  # slices of one message: the loop ran between each two
    assert fast.lines == plain.lines
    assert fast.segments == plain.segments
    assert len(fast.lines) == 600
    assert fast.newest.keys() == plain.newest.keys()
    assert fast.messages == plain.messages == 7
    assert [d[2].reason for d in fast.dead] == [d[2].reason for d in plain.dead] == ["invalid_json"]


async def test_refused_chargers_are_dead_lettered_at_their_positions_and_the_rest_kept() -> None:
    """With provisioned bindings, readings for a charger of another gateway or of none are
    dead-lettered (``charger_not_bound``), one record per message with the readings as they
    were sent and their positions in its payload; a message refused whole adds no line; the
    other readings become lines, and each charger's newest reading is its latest."""
    bindings = Bindings({"cp-0": "gw-1", "cp-1": "gw-1", "cp-2": "gw-2"})
    p = make_processor(RecordingWriter(), bindings)
    mixed = message("gw-1", 1, 6)  # chargers cp-0 .. cp-5: cp-2 is gw-2's, cp-3..5 nobody's
    refused_whole = message("gw-2", 100, 2)  # cp-0 and cp-1: both gw-1's
    again = message("gw-1", 50, 1)  # cp-0 again, stamped later
    batch = await p.prepare([mixed, refused_whole, again])
    sent = orjson.loads(mixed.payload)["readings"]
    dead = [
        (gw, rej.reason, rej.index, [i for i, _, _ in rej.faults], orjson.loads(rej.raw))
        for gw, _, rej in batch.dead
    ]
    other = orjson.loads(refused_whole.payload)["readings"]
    assert dead == [
        ("gw-1", "charger_not_bound", None, [2, 3, 4, 5], [sent[i] for i in (2, 3, 4, 5)]),
        ("gw-2", "charger_not_bound", None, [0, 1], other),
    ]
    assert len(batch.lines) == 3
    assert [(s.msg_no, s.first, s.positions, s.seqs) for s in batch.segments] == [
        (0, 0, [0, 1], [1, 2]),
        (2, 2, [0], [50]),
    ]
    assert {c: v[1] for c, v in batch.newest.items()} == {"cp-0": 50, "cp-1": 2}


async def test_the_newest_reading_of_a_charger_wins_whatever_the_arrival_order() -> None:
    """Across messages, a charger's newest reading is the highest ts, then the highest seq (a
    replay of the same ts with a higher seq wins; an older one arriving later does not)."""
    t = datetime(2026, 5, 1, 12, tzinfo=UTC)

    def one(seq: int, at: datetime) -> Received:
        body = {"charger_id": "cp-1", "seq": seq, "ts": at.isoformat(), "values": {}}
        payload = orjson.dumps(
            {"schema": "charger-telemetry/1", "gateway_id": "gw-1", "readings": [body]}
        )
        return Received("chargers/v1/gw-1/readings", payload, 1, seq, 1)

    p = make_processor(RecordingWriter())
    second = timedelta(seconds=1)
    batch = await p.prepare(
        [one(5, t + second), one(4, t), one(6, t + second), one(3, t + 2 * second)]
    )
    ns, seq, gateway, row, line = batch.newest["cp-1"]
    assert (seq, gateway, line, row["seq"]) == (3, "gw-1", 3, 3)
    assert ns == ts_ns(t + 2 * second)


async def test_the_newest_per_charger_matches_a_plain_maximum_for_any_order() -> None:
    """Messages in order, shuffled, with repeated ts and replays: each charger's newest is the
    reading with the highest (ts, seq) of the batch, the same as a plain maximum over all."""
    rng = random.Random(7)
    t = datetime(2026, 5, 1, 12, tzinfo=UTC)
    for trial in range(40):
        sent: list[tuple[str, int, datetime]] = []
        msgs = []
        for m in range(6):
            body = []
            for i in range(rng.randint(1, 8)):
                seq = m * 10 + i if trial % 2 else rng.randint(0, 60)
                at = t + timedelta(seconds=seq // 3 if trial % 3 else rng.randint(0, 20))
                charger = f"cp-{rng.randint(0, 3)}"
                sent.append((charger, seq, at))
                body.append({"charger_id": charger, "seq": seq, "ts": at.isoformat(), "values": {}})
            payload = orjson.dumps(
                {"schema": "charger-telemetry/1", "gateway_id": "gw-1", "readings": body}
            )
            msgs.append(Received("chargers/v1/gw-1/readings", payload, 1, m, 1))
        if trial % 4 == 3:
            rng.shuffle(msgs)
        p = make_processor(RecordingWriter())
        batch = await p.prepare(msgs)
        expected: dict[str, tuple[int, int]] = {}
        for charger, seq, at in sent:
            expected[charger] = max(expected.get(charger, (ts_ns(at), seq)), (ts_ns(at), seq))
        assert {c: (v[0], v[1]) for c, v in batch.newest.items()} == expected
        for _, seq, _, row, line in batch.newest.values():
            assert row["seq"] == seq
            assert batch.lines[line].endswith(f"seq={seq}i {ts_ns(row['ts'])}")


async def test_a_refused_charger_beside_a_number_too_large_for_a_double() -> None:
    """A payload with ``1e309`` (valid JSON, not a double) in one reading and a reading for a
    charger of another gateway: each is dead-lettered with its own reason and position, and
    the good reading beside them becomes a line."""
    p = make_processor(RecordingWriter())
    assert p.state.bindings.claim("gw-2", "cp-other") is None
    t = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    body = [
        {"charger_id": "cp-1", "seq": 1, "ts": t, "values": {"power_w": 1.5}},
        {"charger_id": "cp-1", "seq": 2, "ts": t, "values": {"power_w": 2.5}},
        {"charger_id": "cp-other", "seq": 3, "ts": t, "values": {}},
    ]
    payload = orjson.dumps(
        {"schema": "charger-telemetry/1", "gateway_id": "gw-1", "readings": body}
    ).replace(b'"power_w":1.5', b'"power_w":1e309')  # not a "1.5" inside the ts
    batch = await p.prepare([Received("chargers/v1/gw-1/readings", payload, 1, 1, 1)])
    # one record for the message: the first reason of the tie names it, each index keeps its own
    [(_, _, record)] = batch.dead
    assert (record.reason, record.index) == ("invalid_reading", None)
    assert [(i, reason) for i, reason, _ in record.faults] == [
        (0, "invalid_reading"),
        (2, "charger_not_bound"),
    ]
    assert orjson.loads(record.raw)[1] == body[2]
    assert len(batch.lines) == 1
    assert batch.lines[0].endswith(f"seq=2i {ts_ns(datetime.fromisoformat(t))}")


class RefusingWriter(RecordingWriter):
    """Refuses for good every line of these measurements (a series limit, a type conflict)."""

    def __init__(self, *measurements: str) -> None:
        super().__init__()
        self.prefixes = tuple(m + "," for m in measurements)

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        if any(line.startswith(self.prefixes) for line in lines):
            raise WriteRejectedError(400, "partial write: max-series-per-database limit exceeded")
        await super().write(lines)


class PubackingMqtt:
    """The broker takes every publish (the dead letter's MQTT record and the acknowledgements)."""

    connected = True

    async def publish(self, topic: str, payload: bytes, **_: object) -> None:
        return None

    async def wait_connected(self) -> None:
        return None


async def test_a_seq_is_acknowledged_only_once_its_dead_letter_is_stored() -> None:
    """InfluxDB refuses a reading, and then its dead letter too: the dead letter's MQTT record
    is no store, so the gateway is told nothing of the batch (it sends it again). A dead letter
    InfluxDB took is acknowledged."""
    mqtt = cast(AsyncMqttClient, PubackingMqtt())
    waiting = {}
    for refused in (("readings", "deadletters"), ("readings",)):
        metrics = Metrics()
        state = State(bindings=Bindings())
        acks = StoredAcks(mqtt, Topics(), metrics, 0.5)
        p = Processor(
            state,
            Preparer(state.bindings, Topics(), TsWindow(timedelta(days=1), timedelta(days=365))),
            InfluxOutput(RefusingWriter(*refused), metrics),
            DeadLetters(mqtt, Topics(), metrics),
            LiveFeed(mqtt, Topics(), metrics, 1.0),
            metrics,
            acks,
        )
        await p.commit(await p.prepare([message("gw-1", 7, 1)]))
        waiting[refused] = acks.waiting
    assert waiting == {("readings", "deadletters"): 0, ("readings",): 1}
