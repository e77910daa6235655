"""Pure scheduling pieces of the publisher: the backlog's rate limit, retry backoff, and the
two lanes (backlog and live) that share the in-flight window."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Lane = Literal["live", "backlog"]


class TokenBucket:
    """At most ``rate`` readings/s on average, in bursts of at most one second's worth (and at
    most ``max_batch``); ``rate`` 0 means unlimited."""

    def __init__(
        self, rate: float, max_batch: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._max_batch = max_batch
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self._rate = rate
        self.burst = max(1, min(self._max_batch, int(rate))) if rate > 0 else self._max_batch
        self._tokens = float(self.burst)
        self._at = self._clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self._rate)
        self._at = now

    def available(self) -> int:
        """How many readings may go now: a whole burst or nothing (no dribbles of tiny batches)."""
        if self._rate <= 0:
            return self._max_batch
        self._refill()
        return self.burst if self._tokens >= self.burst else 0

    def take(self, n: int) -> None:
        if self._rate > 0:
            self._refill()
            self._tokens -= n

    def wait_s(self) -> float:
        """Seconds until :meth:`available` is non-zero."""
        if self._rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (self.burst - self._tokens) / self._rate)


class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is uniform in [d/2, d],
    d = min(cap, base * 2**n)."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._n = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self._n, 60))
        self._n += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._n = 0


@dataclass(slots=True)
class Lanes:
    """Which rows go next. Rows with ``seq <= floor`` are the backlog (what was pending when
    the session started), sent oldest first and paced; newer rows are live, never paced. The
    lanes take turns: after a backlog batch, live goes first, so a live reading waits for at
    most one backlog batch. Cursors only move forward within a session; a failed batch ends
    the session and the next one starts again from the oldest pending row."""

    floor: int = 0
    backlog_after: int = 0
    live_after: int = 0
    backlog_done: bool = False
    live_first: bool = True

    def reset(self, last_seq: int) -> None:
        self.floor = self.live_after = last_seq
        self.backlog_after = 0
        self.backlog_done = last_seq == 0
        self.live_first = True

    def order(self) -> tuple[Lane, Lane]:
        return ("live", "backlog") if self.live_first else ("backlog", "live")

    def sent(self, lane: Lane, last_seq: int) -> None:
        if lane == "live":
            self.live_after = last_seq
        else:
            self.backlog_after = last_seq
        self.live_first = lane == "backlog"
