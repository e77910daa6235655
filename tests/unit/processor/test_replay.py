"""The processor's half of a dead letter's replay (MQTT 5 user property ``replay-of``): no new
dead letter, no stored acknowledgement, no gap tracking, and the outcome line onto the dead
letter's own point. The whole pipeline: tests/integration/query_api/test_deadletters.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from processor.outputs.deadletters import replay_outcome_lines
from processor.prepare import Preparer
from processor.state.bindings import Bindings
from processor.validate import CHARGER_NOT_BOUND, TsWindow
from telemetry_common.deadletters import REPLAY_PROPERTY, DeadLetterKey
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

    refused = await preparer.prepare([_Msg(topics.readings("gw.1"), batch("cp-1"), props)])
    assert refused.dead == []
    assert refused.handled == []
    assert refused.lines == []
    [replay] = refused.replays
    assert (replay.key, replay.reason) == (key, CHARGER_NOT_BOUND)

    stored = await preparer.prepare([_Msg(topics.readings("gw.1"), batch("cp-ok"), props)])
    assert stored.handled == []
    assert len(stored.lines) == 1
    assert stored.segments[0].replay
    assert stored.replays[0].reason is None

    other = ((REPLAY_PROPERTY, DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw-2").id),)
    plain = await preparer.prepare([_Msg(topics.readings("gw.1"), batch("cp-ok"), other)])
    assert plain.replays == []
    assert plain.handled == [("gw.1", None, [7])]


def test_the_outcome_is_written_onto_the_dead_letters_own_point() -> None:
    """Same measurement, tags and time: InfluxDB merges the two fields into the point."""
    key = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1")
    [line] = replay_outcome_lines([(key, "stored")], NOW)
    assert line == (
        f"deadletters,gateway_id=gw.1,reason=charger_not_bound "
        f'replayed_at="2026-05-01T12:00:10.000Z",replay_outcome="stored" {NS}'
    )
