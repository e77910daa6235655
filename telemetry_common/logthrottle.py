"""Rate-limited log lines: at most one line per key (e.g. gateway and reason) per interval.

A flood of bad input must not become a flood of log lines (one gateway sending 250 messages of
1,000 invalid readings once wrote 250,000 WARNING lines). The first line of a key is written at
once; the ones that follow within ``interval_s`` are counted, not written, and the next line
written for that key says how many were left out (``[+N like it suppressed in the last 60 s]``).
The keys kept are bounded (:data:`MAX_KEYS`): past it the oldest is forgotten (its count of
suppressed lines is then written as a line of its own, so nothing is lost in silence).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: Keys remembered at once (each a few hundred bytes).
MAX_KEYS: Final = 10_000


@dataclass(slots=True)
class _Slot:
    since: float  # when the last line of this key was written
    suppressed: int = 0


class LogThrottle:
    """``warning(key, msg, *args)``: ``logger.warning`` at most once per ``interval_s`` per key."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._slots: dict[Hashable, _Slot] = {}

    def warning(
        self, key: Hashable, msg: str, *args: Any, extra: Mapping[str, Any] | None = None
    ) -> bool:
        """Log ``msg % args`` at WARNING unless a line of ``key`` was written less than
        ``interval_s`` ago (then only count it); True if written."""
        return self.log(logging.WARNING, key, msg, *args, extra=extra)

    def log(
        self,
        level: int,
        key: Hashable,
        msg: str,
        *args: Any,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        now = self._clock()
        slot = self._slots.get(key)
        if slot is not None and now - slot.since < self._interval:
            slot.suppressed += 1
            return False
        suppressed = 0 if slot is None else slot.suppressed
        if slot is None:
            self._forget_oldest()
        else:
            del self._slots[key]  # re-inserted last: the dict stays ordered by last line
        self._slots[key] = _Slot(now)
        if suppressed:
            msg += " [+%d like it suppressed in the last %.0f s]"
            args = (*args, suppressed, now - (slot.since if slot else now))
        self._log.log(level, msg, *args, extra=dict(extra or {}, suppressed=suppressed))
        return True

    def _forget_oldest(self) -> None:
        while len(self._slots) >= self._max_keys:
            key, slot = next(iter(self._slots.items()))
            del self._slots[key]
            if slot.suppressed:
                self._log.warning("%d more lines like %r were suppressed", slot.suppressed, key)
