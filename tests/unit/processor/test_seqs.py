"""Seqs the cloud refuses (``seq_out_of_range``), the outbox epoch carried into lines and gap
tracking, and gap tracking's warm-up per (gateway, epoch)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson
import pytest

from processor.core import Processor
from processor.lineproto import ts_ns
from processor.metrics import Metrics
from processor.outputs.deadletters import DeadLetters
from processor.outputs.influx import InfluxOutput
from processor.outputs.live import LiveFeed
from processor.prepare import Preparer
from processor.state import State
from processor.state.storage import warm_up
from processor.validate import SEQ_OUT_OF_RANGE, TsWindow
from telemetry_common.influx_query import Series
from telemetry_common.influxql import (
    QueryBuildError,
    count_seq_range_query,
    highest_seq_of_epoch_query,
)
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.schema import MAX_SEQ
from telemetry_common.topics import Topics
from tests.unit.processor.test_core import RecordingWriter

E1, E2 = "00000000000000e1", "00000000000000e2"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
WINDOW = TsWindow(timedelta(days=1), timedelta(days=36_500))


class LinesWriter(RecordingWriter):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        self.lines += lines


def make(writer: RecordingWriter, *, max_seq_jump: int = 1000) -> Processor:
    unused_mqtt = cast(AsyncMqttClient, object())
    state = State()
    metrics = Metrics()
    return Processor(
        state,
        Preparer(state.bindings, Topics(), WINDOW, state.gaps, max_seq_jump),
        InfluxOutput(writer, metrics),
        DeadLetters(unused_mqtt, Topics(), metrics),
        LiveFeed(unused_mqtt, Topics(), metrics, 1.0),
        metrics,
    )


def msg(gateway: str, seqs: list[int], epoch: str | None = None, charger: str = "cp-1") -> Received:
    readings = [
        {
            "charger_id": charger,
            "seq": s,
            "ts": (T0 + timedelta(milliseconds=k)).isoformat(),
            "values": {"power_w": 1.0},
        }
        for k, s in enumerate(seqs)
    ]
    body: dict[str, object] = {"gateway_id": gateway, "readings": readings}
    if epoch is not None:
        body["epoch"] = epoch
    return Received(f"chargers/v1/{gateway}/readings", orjson.dumps(body), 1, 1, 1)


async def test_a_seq_above_2_53_is_dead_lettered_and_the_others_kept() -> None:
    """seq 2^63-1 and 2^53 are refused (``seq_out_of_range``, each with its position and its
    reading as sent); 2^53-1 and the ordinary seqs beside them are stored, and the refused
    readings leave gap tracking alone: the next seq after 3 opens no gap and 4..5 missing is
    still seen."""
    p = make(RecordingWriter(), max_seq_jump=2**62)
    m = msg("gw-1", [1, 2**63 - 1, 2, 2**53, 3])
    batch = await p.prepare([m])
    sent = orjson.loads(m.payload)["readings"]
    [(_, _, record)] = batch.dead  # one record per message
    assert [(reason, i) for i, reason, _ in record.faults] == [
        (SEQ_OUT_OF_RANGE, 1),
        (SEQ_OUT_OF_RANGE, 3),
    ]
    assert orjson.loads(record.raw) == [sent[1], sent[3]]
    assert "2^53-1" in batch.dead[0][2].detail
    assert [s.seqs for s in batch.segments] == [[1, 2, 3]]
    assert len(batch.lines) == 3
    batch.dead.clear()  # checked above; this processor has no broker to publish them
    await p.commit(batch)
    await p.commit(await p.prepare([msg("gw-1", [MAX_SEQ - 10**6], charger="cp-2")]))
    assert p.state.gaps.high("gw-1", None) == MAX_SEQ - 10**6  # a jump within the rule


async def test_a_seq_far_beyond_the_known_high_of_its_epoch_is_refused() -> None:
    """With ``max_seq_jump`` 1000: an unseen epoch accepts seq up to 1000 and refuses 1001; once
    its high is 500, seq 1500 is accepted and 1501 refused; another epoch of the same gateway
    has its own high. The refused reading binds no charger."""
    p = make(RecordingWriter(), max_seq_jump=1000)
    first = await p.prepare([msg("gw-1", [1001], E1, charger="cp-x"), msg("gw-1", [500], E1)])
    assert [r.reason for _, _, r in first.dead] == [SEQ_OUT_OF_RANGE]
    assert "more than 1000 above 0" in first.dead[0][2].detail
    assert p.state.bindings.claim("gw-2", "cp-x") is None  # cp-x was never bound to gw-1
    first.dead.clear()  # checked above; this processor has no broker to publish them
    await p.commit(first)
    assert p.state.gaps.high("gw-1", E1) == 500
    second = await p.prepare([msg("gw-1", [1500, 1501], E1), msg("gw-1", [1000], E2)])
    assert [(reason, i) for _, _, r in second.dead for i, reason, _ in r.faults] == [
        (SEQ_OUT_OF_RANGE, 1)
    ]
    assert [(s.epoch, s.seqs) for s in second.segments] == [(E1, [1500]), (E2, [1000])]


async def test_the_epoch_is_a_field_of_each_line_and_keys_gap_tracking() -> None:
    """A batch with an epoch writes it as a string field of every point (none without one), and
    its seqs are tracked under (gateway, epoch): a new epoch from 1 with 3..4 missing opens a
    gap although the old epoch's high is 100."""
    writer = LinesWriter()
    p = make(writer, max_seq_jump=10**6)
    await p.commit(await p.prepare([msg("gw-1", [99, 100], E1), msg("gw-2", [7], charger="cp-2")]))
    assert all(f'epoch="{E1}",seq=' in line for line in writer.lines[:2])
    assert "epoch" not in writer.lines[2]
    await p.commit(await p.prepare([msg("gw-1", [1, 2, 5], E2)]))
    report = p.state.gaps.report()["gw-1"]
    assert [(g["epoch"], g["first_seq"], g["last_seq"]) for g in report] == [(E2, 3, 4)]


class ScriptedInflux:
    """Answers each query with the first scripted answer whose key it contains."""

    def __init__(self, answers: dict[str, list[Series]]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        return next((a for key, a in self.answers.items() if key in q), [])

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.query(q)


def _per_gateway(column: str, rows: dict[str, tuple[int, int, str | None]]) -> list[Series]:
    return [
        Series("readings", ["time", column, "epoch"], [[ns, seq, epoch]], {"gateway_id": gw})
        for gw, (ns, seq, epoch) in rows.items()
    ]


async def test_warm_up_seeds_each_gateway_with_its_current_epoch() -> None:
    """gw-same's highest seq is of its newest epoch: seeded from it. gw-new created its outbox
    again (epoch E2, seqs from 1) after reaching 10,000 in E1: seeded with E2's own highest
    (asked for), so a gap in E2 after a bridge restart is seen. gw-none has no epoch at all:
    seeded as before. gw-odd's newest point has no epoch but its highest has one: not seeded."""
    ns = ts_ns(T0)
    influx = ScriptedInflux(
        {
            "last(": _per_gateway(
                "seq",
                {
                    "gw-same": (ns, 40, E1),
                    "gw-new": (ns, 7, E2),
                    "gw-none": (ns, 3, None),
                    "gw-odd": (ns, 5, None),
                },
            ),
            'max("seq") AS "seq", "epoch"': _per_gateway(
                "seq",
                {
                    "gw-same": (ns, 50, E1),
                    "gw-new": (ns - 10, 10_000, E1),
                    "gw-none": (ns, 9, None),
                    "gw-odd": (ns, 8, E1),
                },
            ),
            f"'{E2}'": [Series("readings", ["time", "seq"], [[ns + 5, 8]])],
        }
    )
    state = State()
    await warm_up(state, influx, 0.1)
    # Asked of the recent window only (the newest-stored state holds nothing here).
    asked = highest_seq_of_epoch_query("gw-new", E2)
    assert any(q.startswith(f"{asked} AND time >= ") for q in influx.queries)
    assert state.gaps.high("gw-same", E1) == 50
    assert state.gaps.high("gw-new", E2) == 8
    assert state.gaps.high("gw-new", E1) is None
    assert state.gaps.high("gw-none", None) == 9
    assert state.gaps.high("gw-odd", None) is None
    assert state.gaps.high("gw-odd", E1) is None
    state.gaps.observe("gw-new", 11, ns + 11, 0.0, E2)
    assert [(g["first_seq"], g["last_seq"]) for g in state.gaps.report()["gw-new"]] == [(9, 10)]


def test_epoch_queries_refuse_what_is_not_an_epoch() -> None:
    """An epoch reaches InfluxQL only in its shape (16 lowercase hex digits)."""
    start, end = T0, T0 + timedelta(minutes=1)
    assert f"\"epoch\" = '{E1}'" in count_seq_range_query("gw", 1, 2, start, end, E1)
    assert "epoch" not in count_seq_range_query("gw", 1, 2, start, end)
    for bad in ("' OR 1=1 --", "00000000000000E1", "e1"):
        with pytest.raises(QueryBuildError):
            highest_seq_of_epoch_query("gw", bad)
        with pytest.raises(QueryBuildError):
            count_seq_range_query("gw", 1, 2, start, end, bad)
