"""Waiting in tests: poll a condition until it holds (bounded), or fail the test saying what was
awaited."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """True as soon as ``check()`` is; False if it still is not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    if not poll(check, timeout):
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
