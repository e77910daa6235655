"""The stored acknowledgement's ranges, and which seqs a prepared batch says it handled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from processor.outputs.acks import ack_payload, to_ranges
from processor.prepare import Preparer, payload_seqs
from processor.state.bindings import Bindings
from processor.validate import TsWindow
from telemetry_common.schema import format_ts
from telemetry_common.stored_ack import sent_at
from telemetry_common.topics import Topics


def test_ranges_are_merged_sorted_and_free_of_repeats() -> None:
    assert to_ranges([5, 1, 2, 3, 3, 9, 10, 7]) == [[1, 3], [5, 5], [7, 7], [9, 10]]
    assert to_ranges([]) == []
    at = datetime(2026, 12, 5, 18, 0, 0, 123456, tzinfo=UTC)
    assert orjson.loads(ack_payload("0123456789abcdef", [2, 1], ts=at)) == {
        "epoch": "0123456789abcdef",
        "seqs": [[1, 2]],
        "ts": "2026-12-05T18:00:00.123456+00:00",
    }


def test_an_acknowledgement_says_when_the_bridge_sent_it() -> None:
    """``ts`` is the bridge's clock (now by default); an acknowledgement without one (an older
    bridge) or with a time without a timezone says nothing."""
    before = datetime.now(UTC)
    at = sent_at(ack_payload(None, [1]))
    assert at is not None
    assert before <= at <= datetime.now(UTC)
    assert sent_at(b'{"epoch": null, "seqs": [[1, 1]]}') is None
    assert sent_at(b'{"epoch": null, "seqs": [], "ts": "2026-12-05T18:00:00"}') is None
    assert sent_at(b"not json") is None


@pytest.mark.parametrize(
    ("payload", "seqs"),
    [
        (b"not json", []),
        (b"[1, 2]", []),
        (b'{"readings": 3}', []),
        (
            b'{"readings": [{"seq": 4}, {"seq": "5"}, {"seq": 6.0}, 7, {"seq": -1}, {"seq": 8}]}',
            [4, 8],
        ),
        (b'{"readings": [{"seq": 99999999999999999999}]}', []),
    ],
)
def test_payload_seqs_takes_only_integer_seqs(payload: bytes, seqs: list[int]) -> None:
    assert payload_seqs(payload) == seqs


async def test_every_seq_of_a_message_is_handled_stored_or_dead_lettered() -> None:
    topics = Topics()
    now = datetime.now(UTC)

    def reading(charger: str, seq: int, ts: datetime) -> dict[str, object]:
        return {"charger_id": charger, "seq": seq, "ts": format_ts(ts), "values": {"p_w": 1.0}}

    class Msg:
        def __init__(self, gw: str, body: object) -> None:
            self.topic = topics.readings(gw)
            self.payload = body if isinstance(body, bytes) else orjson.dumps(body)

    bindings = Bindings({"cp-b": "gw-b"})
    preparer = Preparer(bindings, topics, TsWindow(timedelta(minutes=5), timedelta(days=1)))
    epoch = "00000000000000aa"
    batch = await preparer.prepare(
        [
            Msg("gw-a", {"gateway_id": "gw-a", "epoch": epoch,
                         "readings": [reading("cp-a", 1, now)]}),
            Msg("gw-a", {"gateway_id": "gw-a", "readings": [
                reading("cp-a", 2, now - timedelta(days=30)), reading("cp-a", 3, now)]}),
            Msg("gw-a", {"gateway_id": "gw-a", "readings": [reading("cp-b", 4, now)]}),
            Msg("gw-a", b"{"),
        ]
    )  # fmt: skip
    assert batch.handled == [("gw-a", epoch, [1]), ("gw-a", None, [2, 3]), ("gw-a", None, [4])]


def test_a_stored_dead_letter_escapes_its_strings_and_bounds_its_payload() -> None:
    from processor.outputs.deadletters import STORED_MAX_RAW, deadletter_lines
    from processor.validate import Rejected

    dead = [
        ("gw-1", "chargers/v1/gw-1/readings", Rejected("invalid_json", 'a"b\\c\nd', b"x" * 10)),
        ("gw-1", "t", Rejected("ts_too_old", "old", b"y" * (STORED_MAX_RAW + 5), 3)),
    ]
    first, second = deadletter_lines(dead, 1_000)
    assert first.startswith("deadletters,gateway_id=gw-1,reason=invalid_json ")
    assert 'detail="a\\"b\\\\c\\nd"' in first
    assert first.endswith(" 1000")
    assert "index=3i" in second
    assert f"payload_bytes={STORED_MAX_RAW + 5}i" in second
    assert second.endswith(" 1001")
    assert "\n" not in first + second


async def test_a_message_refused_whole_is_acknowledged_under_the_epoch_it_gave() -> None:
    """An envelope refused whole (an extra key) still names its epoch: the gateway's outbox
    would otherwise never see its seqs acknowledged."""
    topics = Topics()
    epoch = "00000000000000bb"
    reading = {"charger_id": "cp-a", "seq": 3, "ts": format_ts(datetime.now(UTC)), "values": {}}
    body = {"gateway_id": "gw-a", "epoch": epoch, "extra": 1, "readings": [reading]}

    class Msg:
        topic = topics.readings("gw-a")
        payload = orjson.dumps(body)

    preparer = Preparer(Bindings(), topics, TsWindow(timedelta(minutes=5), timedelta(days=1)))
    batch = await preparer.prepare([Msg()])
    assert [r.reason for _, _, r in batch.dead] == ["invalid_envelope"]
    assert batch.handled == [("gw-a", epoch, [3])]
