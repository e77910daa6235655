"""Late readings are marked for the rollup job (processor/outputs/late.py): readings older than
LATE_AFTER_S reach the rollups only through these marks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson

from processor.core import Processor
from processor.metrics import Metrics
from processor.outputs.deadletters import DeadLetters
from processor.outputs.influx import InfluxOutput
from processor.outputs.late import late_lines
from processor.outputs.live import LiveFeed
from processor.prepare import Preparer
from processor.state import State
from processor.state.bindings import Bindings
from processor.validate import TsWindow
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.storage import LATE_AFTER_S
from telemetry_common.topics import Topics

S = 1_000_000_000
NOW = 1_800_000_000 * S


def test_only_readings_older_than_the_cutoff_are_marked_one_span_per_gateway() -> None:
    cutoff = NOW - LATE_AFTER_S * S
    lines = late_lines(
        [
            ("gw-1", [NOW - 60 * S, NOW - 30 * S]),  # minutes old: the job's look back
            ("gw-1", [cutoff - 10 * S, NOW - S, cutoff - 100 * S]),
            ("gw-2", [cutoff - 5 * S]),
            ("gw-1", [cutoff - 3 * S]),
            ("gw-3", []),
        ],
        NOW,
        bridge="bridge 1",
    )
    assert lines == [
        f"rollup_late,bridge=bridge\\ 1,gateway_id=gw-1 first={cutoff - 100 * S}i,"
        f"last={cutoff - 3 * S}i {NOW}",
        f"rollup_late,bridge=bridge\\ 1,gateway_id=gw-2 first={cutoff - 5 * S}i,"
        f"last={cutoff - 5 * S}i {NOW + 1}",
    ]
    assert late_lines([("gw-1", [NOW - 60 * S])], NOW, bridge="b") == []


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        self.lines += lines

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_batch_with_readings_a_day_old_writes_its_mark_with_the_readings() -> None:
    writer = Writer()
    unused = cast(AsyncMqttClient, object())
    state = State(bindings=Bindings())
    metrics = Metrics()
    p = Processor(
        state,
        Preparer(state.bindings, Topics(), TsWindow(timedelta(days=1), timedelta(days=3650))),
        InfluxOutput(writer, metrics),
        DeadLetters(unused, Topics(), metrics),
        LiveFeed(unused, Topics(), metrics, 1.0),
        metrics,
        name="bridge-a",
    )
    old, new = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)
    readings = [
        {"charger_id": "cp-1", "seq": k + 1, "ts": ts.isoformat(), "values": {"power_w": 1.0}}
        for k, ts in enumerate([old, old + timedelta(minutes=5), new])
    ]
    payload = orjson.dumps({"gateway_id": "gw-1", "readings": readings})
    await p.commit(await p.prepare([Received("chargers/v1/gw-1/readings", payload, 1, 1, 1)]))
    marks = [line for line in writer.lines if line.startswith("rollup_late,")]
    ns = (old - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    assert len(marks) == 1
    assert marks[0].startswith("rollup_late,bridge=bridge-a,gateway_id=gw-1 ")
    assert f"first={ns}i,last={ns + 300 * S}i " in marks[0]
    assert sum(line.startswith("readings,") for line in writer.lines) == 3

    writer.lines.clear()
    fresh = orjson.dumps({"gateway_id": "gw-1", "readings": [{**readings[2], "seq": 9}]})
    await p.commit(await p.prepare([Received("chargers/v1/gw-1/readings", fresh, 1, 2, 1)]))
    assert [line for line in writer.lines if line.startswith("rollup_late,")] == []
