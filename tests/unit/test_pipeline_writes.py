"""How the processor talks to its writer (a recording fake: this is pure batching logic)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson

from processor.pipeline import Processor
from processor.writer import WriteUnavailableError
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.topics import Topics


class RecordingWriter:
    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[int] = []
        self.fail_first = fail_first

    async def write(self, lines: Sequence[str]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise WriteUnavailableError(503, "busy")
        self.requests.append(len(lines))

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


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
    unused_mqtt = cast(AsyncMqttClient, object())  # no dead letters here: MQTT is not touched
    p = Processor(writer, unused_mqtt, Topics(), max_lines_per_write=5_000)
    await p.process([message("gw-1", k * 1000 + 1, 1000) for k in range(12)])
    assert writer.requests == [4000, 4000, 4000]
    assert len(p.lvc) == 50


async def test_unavailable_influx_is_retried_until_it_takes_the_write() -> None:
    """Transient failures are retried (capped backoff) and the batch is written once it works."""
    writer = RecordingWriter(fail_first=2)
    p = Processor(writer, cast(AsyncMqttClient, object()), Topics(), max_backoff_s=0.01)
    await p.process([message("gw-1", 1, 10)])
    assert writer.requests == [10]


async def test_prepare_async_hands_the_loop_back_and_prepares_the_same_batch() -> None:
    """prepare_async yields to the event loop between slices of payload (a write's answer is
    not held up by the whole batch) and yields the same points, in the same order, as
    prepare; a bad message in a slice is dead-lettered either way."""
    msgs = [message("gw-1", k * 100 + 1, 100) for k in range(6)]
    bad = Received("chargers/v1/gw-1/readings", b"{not json", 1, 999, 1)
    msgs.insert(3, bad)
    unused_mqtt = cast(AsyncMqttClient, object())
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(count_ticks())
    await asyncio.sleep(0)
    ticks = 0
    fast = await Processor(writer := RecordingWriter(), unused_mqtt, Topics()).prepare_async(
        msgs, slice_bytes=1
    )
    ticker.cancel()
    plain = Processor(writer, unused_mqtt, Topics()).prepare(msgs)
    assert ticks == len(msgs) - 1  # slices of one message: the loop ran between each two
    assert fast.lines == plain.lines
    assert fast.keys == plain.keys
    assert len(fast.lines) == 600
    assert fast.newest.keys() == plain.newest.keys()
    assert fast.messages == plain.messages == 7
    assert [d[2].reason for d in fast.dead] == [d[2].reason for d in plain.dead] == ["invalid_json"]
