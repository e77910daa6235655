"""Rate-limited WARNING lines: one per key per interval, the next one says how many were left
out; keys bounded."""

from __future__ import annotations

import logging

import pytest

from telemetry_common.logthrottle import LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_and_the_next_says_how_many_were_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t"), 60.0, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        for n in range(1000):
            clock.now = n * 0.01
            throttle.warning(("gw-1", "invalid_reading"), "dead-lettered %d", n)
            throttle.warning(("gw-2", "invalid_reading"), "dead-lettered %d", n)
        clock.now = 61.0
        assert throttle.warning(("gw-1", "invalid_reading"), "dead-lettered %d", 1000)
        assert not throttle.warning(("gw-1", "invalid_reading"), "dead-lettered %d", 1001)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "dead-lettered 0",
        "dead-lettered 0",
        "dead-lettered 1000 [+999 like it suppressed in the last 61 s]",
    ]


def test_keys_are_bounded_and_a_forgotten_count_is_still_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle = LogThrottle(logging.getLogger("t"), 60.0, clock=Clock(), max_keys=2)
    with caplog.at_level(logging.WARNING, "t"):
        throttle.warning("a", "x")
        throttle.warning("a", "x")
        throttle.warning("b", "x")
        throttle.warning("c", "x")  # forgets a, which had one suppressed
    assert [r.getMessage() for r in caplog.records] == [
        "x",
        "x",
        "1 more lines like 'a' were suppressed",
        "x",
    ]
