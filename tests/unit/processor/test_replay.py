"""The processor's half of a dead letter's replay (MQTT 5 user property ``replay-of``): no new
dead letter, no stored acknowledgement, no gap tracking, and the outcome line onto the dead
letter's own point. The whole pipeline: tests/integration/query_api/test_deadletters.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson

from processor.core import Processor
from processor.metrics import Metrics
from processor.outputs.acks import StoredAcks
from processor.outputs.deadletters import DeadLetters, replay_outcome_lines
from processor.outputs.influx import InfluxOutput
from processor.outputs.live import LiveFeed
from processor.prepare import Preparer
from processor.state import State
from processor.state.bindings import Bindings
from processor.validate import CHARGER_NOT_BOUND, TsWindow
from telemetry_common.deadletters import REPLAY_PROPERTY, DeadLetterKey
from telemetry_common.influx_write import WriteRejectedError
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.topics import Topics

NOW = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
NS = 1_777_636_800_000_000_123
READING = {"charger_id": "cp-1", "seq": 7, "ts": "2026-05-01T12:00:00.000Z", "values": {"p_w": 1}}


class _Msg:
    def __init__(self, topic: str, payload: bytes, props: tuple[tuple[str, str], ...]) -> None:
        self.topic, self.payload, self.user_properties = topic, payload, props


async def test_a_replay_is_neither_acknowledged_nor_dead_lettered_again() -> None:
    """The processor's half: a replay refused again leaves no new dead letter and no stored
    acknowledgement, only its outcome reason; a stored replay's segment is marked (no gap
    tracking) and its seqs are not acknowledged; ``replay-of`` naming another gateway's dead
    letter is ignored."""
    topics = Topics("chargers/v1")
    ts = TsWindow(max_future=timedelta(days=3650), max_age=timedelta(days=3650))
    preparer = Preparer(Bindings({"cp-ok": "gw.1"}), topics, ts)
    key = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1")
    props = ((REPLAY_PROPERTY, key.id),)

    def batch(charger: str) -> bytes:
        reading = {**READING, "charger_id": charger}
        return orjson.dumps({"gateway_id": "gw.1", "readings": [reading]})

    refused = await preparer.prepare([_Msg(topics.replay("gw.1"), batch("cp-1"), props)])
    assert refused.dead == []
    assert refused.handled == []
    assert refused.lines == []
    [replay] = refused.replays
    assert (replay.key, replay.reason) == (key, CHARGER_NOT_BOUND)

    stored = await preparer.prepare([_Msg(topics.replay("gw.1"), batch("cp-ok"), props)])
    assert stored.handled == []
    assert len(stored.lines) == 1
    assert stored.segments[0].replay
    assert stored.replays[0].reason is None

    other = ((REPLAY_PROPERTY, DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw-2").id),)
    plain = await preparer.prepare([_Msg(topics.replay("gw.1"), batch("cp-ok"), other)])
    assert plain.replays == []
    assert plain.handled == [("gw.1", None, [7])]

    # A gateway cannot pass its own message off as a replay: ``replay-of`` on its readings
    # topic (which it may write; only the API may write the replay topic) is ignored.
    spoofed = await preparer.prepare([_Msg(topics.readings("gw.1"), batch("cp-1"), props)])
    assert spoofed.replays == []
    assert [(gw, r.reason) for gw, _, r in spoofed.dead] == [("gw.1", CHARGER_NOT_BOUND)]
    assert spoofed.handled == [("gw.1", None, [7])]


def test_the_outcome_is_written_onto_the_dead_letters_own_point() -> None:
    """Same measurement, tags and time: InfluxDB merges the two fields into the point."""
    key = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1")
    [line] = replay_outcome_lines([(key, "stored")], NOW)
    assert line == (
        f"deadletters,gateway_id=gw.1,reason=charger_not_bound "
        f'replayed_at="2026-05-01T12:00:10.000Z",replay_outcome="stored" {NS}'
    )


class _Writer:
    """Refuses every ``readings`` line for good; records the rest."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        if any(line.startswith("readings,") for line in lines):
            raise WriteRejectedError(400, "partial write: field type conflict")
        self.lines += lines

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Mqtt:
    connected = True

    def __init__(self) -> None:
        self.topics: list[str] = []

    async def publish(self, topic: str, payload: bytes, **_: object) -> None:
        self.topics.append(topic)

    async def wait_connected(self) -> None:
        return None


async def test_a_replay_influxdb_refuses_is_recorded_on_its_dead_letter_only() -> None:
    """The commit: a replayed reading InfluxDB refuses makes no new dead letter (none written,
    none published), is acknowledged to nobody, and its dead letter gets
    ``deadlettered:influx_rejected``."""
    writer, fake = _Writer(), _Mqtt()
    mqtt = cast(AsyncMqttClient, fake)
    metrics = Metrics()
    state = State(bindings=Bindings())
    acks = StoredAcks(mqtt, Topics(), metrics, 0.5)
    p = Processor(
        state,
        Preparer(state.bindings, Topics(), TsWindow(timedelta(days=1), timedelta(days=3650))),
        InfluxOutput(writer, metrics),
        DeadLetters(mqtt, Topics(), metrics),
        LiveFeed(mqtt, Topics(), metrics, 1.0),
        metrics,
        acks,
    )
    key = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw-1")
    payload = orjson.dumps({"gateway_id": "gw-1", "readings": [READING]})
    msg = Received(
        "chargers/v1/replay/gw-1/readings",
        payload,
        1,
        1,
        1,
        user_properties=((REPLAY_PROPERTY, key.id),),
    )
    await p.commit(await p.prepare([msg]))
    # (a replayed reading is old: the rollup job is told which range to recompute)
    [line] = [line for line in writer.lines if not line.startswith("rollup_late,")]
    assert line.startswith("deadletters,gateway_id=gw-1,reason=charger_not_bound ")
    assert 'replay_outcome="deadlettered:influx_rejected"' in line
    assert line.endswith(f" {NS}")
    assert acks.waiting == 0
    assert fake.topics == []
    assert len(state.lvc) == 0
