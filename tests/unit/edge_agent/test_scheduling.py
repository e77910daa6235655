"""Publisher scheduling without a broker (rate limit, backoff, lanes) and the command layer's
answers and response-topic rule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from edge_agent.capture import Capture
from edge_agent.commands import Commands
from edge_agent.outbox import Outbox
from edge_agent.pacing import Backoff, Lanes, TokenBucket
from edge_agent.publisher import Counters, Publisher
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Pace
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.topics import Topics


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_paces_in_one_second_bursts() -> None:
    """At 500 readings/s the backlog goes in bursts of 500 (one second's worth), 500/s on
    average; 0 means unlimited."""
    clock = Clock()
    bucket = TokenBucket(500, max_batch=1000, clock=clock)
    assert bucket.available() == 500
    bucket.take(500)
    assert bucket.available() == 0
    assert bucket.wait_s() == pytest.approx(1.0)
    clock.t += 0.5
    assert bucket.available() == 0
    clock.t += 0.5
    assert bucket.available() == 500
    sent = 0
    for _ in range(100):  # 10 simulated seconds in 0.1 s steps
        clock.t += 0.1
        n = bucket.available()
        bucket.take(n)
        sent += n
    assert 4500 <= sent <= 5500
    assert TokenBucket(0, max_batch=1000, clock=clock).available() == 1000
    assert TokenBucket(3000, max_batch=1000, clock=clock).available() == 1000


def test_backoff_is_capped_exponential_with_jitter() -> None:
    """Delays double up to the cap, each within [d/2, d]; reset starts over."""
    lows = Backoff(0.5, 8.0, rng=lambda: 0.0)
    highs = Backoff(0.5, 8.0, rng=lambda: 1.0)
    assert [lows.next() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [highs.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    highs.reset()
    assert highs.next() == 0.5


def test_lanes_alternate_so_live_waits_at_most_one_backlog_batch() -> None:
    """Backlog and live take turns; after a backlog batch, live goes first."""
    lanes = Lanes()
    lanes.reset(last_seq=5000)
    assert (lanes.floor, lanes.backlog_after, lanes.live_after) == (5000, 0, 5000)
    assert lanes.order() == ("live", "backlog")
    lanes.sent("backlog", 1000)
    assert lanes.order() == ("live", "backlog")
    lanes.sent("live", 5010)
    assert lanes.order() == ("backlog", "live")
    assert (lanes.backlog_after, lanes.live_after) == (1000, 5010)
    lanes.reset(last_seq=0)
    assert lanes.backlog_done


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("chargers/v1/gw-1/reply/op-7", True),
        ("chargers/v1/gw-1/reply/a/b", True),
        ("chargers/v1/gw-1/reply/", False),
        ("chargers/v1/gw-1/reply/+", False),
        ("chargers/v1/gw-1/reply/#", False),
        ("chargers/v1/gw-2/reply/op-7", False),
        ("chargers/v1/gw-1/readings", False),
        ("chargers/v1/live/x", False),
        ("chargers/v1/gw-1/reply//x", False),
    ],
)
def test_only_the_gateways_own_reply_topics_are_answered(topic: str, ok: bool) -> None:
    """A response topic must be a concrete topic under {root}/{gateway}/reply/."""
    assert Topics().is_reply_topic("gw-1", topic) is ok


@pytest.fixture
def commands(tmp_path: Path) -> tuple[Commands, Pace, Outbox]:
    settings = EdgeSettings(gateway_id="gw-1", outbox_path=tmp_path / "o.sqlite3")
    outbox = Outbox(settings.outbox_path)
    # Execution needs no broker; only ``ping`` reads ``connected``. The MQTT side is covered by
    # tests/integration/edge_agent/test_agent.py.
    client = cast(AsyncMqttClient, SimpleNamespace(connected=False))
    counters = Counters()
    publisher = Publisher(settings, outbox, client, counters)
    pace = Pace(1.0)
    return (
        Commands("gw-1", settings.topics, outbox, client, publisher, counters, pace),
        pace,
        outbox,
    )


async def run(cmds: Commands, name: str, args: Any = None) -> dict[str, Any]:
    return await cmds.execute(name, b"" if args is None else orjson.dumps(args))


async def test_command_answers(commands: tuple[Commands, Pace, Outbox]) -> None:
    """Each command answers ok with its data, or a machine-readable error; set-interval changes
    the simulator's pace; outbox-stats reports the outbox."""
    cmds, pace, outbox = commands
    ping = await run(cmds, "ping")
    assert (ping["ok"], ping["command"], ping["gateway_id"]) == (True, "ping", "gw-1")
    assert await run(cmds, "set-interval", {"interval_s": 0.25}) == {
        "ok": True,
        "command": "set-interval",
        "interval_s": 0.25,
        "previous_s": 1.0,
    }
    assert pace.interval_s == 0.25
    for bad in ({"interval_s": 0}, {"interval_s": "1"}, {"interval_s": True}, {}):
        answer = await run(cmds, "set-interval", bad)
        assert (answer["ok"], answer["error"]) == (False, "bad_request")
    assert pace.interval_s == 0.25
    outbox.append([Capture("CP-1", datetime.now(UTC), {"energy_wh": 1.0}).to_body()])
    stats = await run(cmds, "outbox-stats")
    assert stats["ok"]
    assert stats["stats"]["pending"] == 1
    flush = await run(cmds, "flush", {"timeout_s": 0.1})
    assert flush == {"ok": True, "command": "flush", "flushed": False, "pending": 1}
    assert (await run(cmds, "reboot"))["error"] == "unknown_command"
    bad_json = await cmds.execute("ping", b"{")
    assert (bad_json["ok"], bad_json["error"]) == (False, "bad_request")
    not_object = await cmds.execute("ping", b"[1]")
    assert not_object["error"] == "bad_request"
    outbox.close()


async def test_pace_change_wakes_a_sleeping_simulator() -> None:
    """set-interval takes effect at once, not after the current (long) sleep."""
    pace = Pace(30.0)
    sleeper = asyncio.create_task(pace.sleep())
    await asyncio.sleep(0.01)
    pace.set(0.5)
    async with asyncio.timeout(1.0):
        await sleeper
