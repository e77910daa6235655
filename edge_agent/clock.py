"""The gateway's clock: is it synchronised, and are the readings it captures too old?

A reading is stamped by the charger or by this gateway; the cloud dead-letters one more than
``MAX_FUTURE_S`` (300 s) ahead of its clock (``ts_in_future``) or further back than its raw
retention (``ts_too_old``). The agent cannot prevent either, but it says so early, in its
metrics and on its state topic (docs/design.md#gateway-state):

- **os**: the kernel's own word (Linux): ``adjtimex`` with ``modes = 0`` only reads the NTP
  status (any process may) and returns ``TIME_ERROR`` while ``STA_UNSYNC`` is set, i.e. no
  NTP daemon (chronyd, ntpd, systemd-timesyncd) has disciplined the clock; what
  ``timedatectl`` shows as "System clock synchronized". None (unknown) elsewhere.
- **cloud**: the bridges' stored acknowledgements carry the bridge's clock when it sent them
  (``ts``). For each, ``d = received - ts`` is this clock's offset from the bridge's plus the
  acknowledgement's transit, which is never negative: ``d < -MAX_SKEW_S`` means this clock is
  behind, for certain; this clock is ahead when even the smallest ``d`` of the
  acknowledgements of the last ``SKEW_WINDOW_S`` exceeds ``MAX_SKEW_S`` (one acknowledgement
  held in the broker while the gateway was away inflates its own ``d``, not the smallest).
  The estimate is that smallest ``d``; samples taken before the clock was set (a step of the
  wall clock against the monotonic one) are dropped.
  Good to about the transit (well under a second on a working link), and as good as the
  bridge's clock (NTP-disciplined in the cloud). None until an acknowledgement with ``ts``
  came (``DELETE_AFTER=puback``, or bridges older than the key).

Readings older than ``MAX_AGE_DAYS`` (30, the cloud's default raw retention: the agent does not
know the cloud's) are counted and logged at most once per ``LOG_EVERY_S``, and still sent: the
cloud's dead letter keeps them, replayable, and says why; dropping them here would lose the
evidence of a charger's clock fault.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from edge_agent.capture import Capture
from telemetry_common.stored_ack import sent_at

log = logging.getLogger(__name__)

#: adjtimex's return value while the clock is not synchronised (STA_UNSYNC or STA_CLOCKERR).
TIME_ERROR: Final = 5
#: Larger than ``struct timex`` on every Linux ABI (208 bytes on x86_64): zeroed, modes = 0.
_TIMEX_BYTES: Final = 512
#: At most one "too old" warning per this many seconds.
LOG_EVERY_S: Final = 60.0
#: The cloud's view is judged on the acknowledgements of this last stretch.
SKEW_WINDOW_S: Final = 600.0
#: ... at most this many of them.
SKEW_SAMPLES: Final = 64
#: A change of wall minus monotonic clock by more than this: the clock was set (the samples
#: measured before are dropped).
STEP_S: Final = 1.0


def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        call: Callable[[ctypes.Array[ctypes.c_char]], int] = libc.adjtimex
    except (OSError, AttributeError):
        return None
    return call


_ADJTIMEX = _adjtimex()


def os_unsynchronised() -> bool | None:
    """True while the kernel says the clock is not synchronised, False once it is; None where
    it cannot be asked (not Linux, or the call failed)."""
    if _ADJTIMEX is None:
        return None
    buf = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes = 0: read only
    state = _ADJTIMEX(buf)
    if state < 0:
        return None
    return bool(state == TIME_ERROR)


class ClockWatch:
    """The two views of this gateway's clock, and the count of readings too old."""

    def __init__(
        self,
        max_skew_s: float,
        max_age: timedelta,
        *,
        os_status: Callable[[], bool | None] = os_unsynchronised,
    ) -> None:
        self._max_skew_s = max_skew_s
        self._max_age = max_age
        self._os_status = os_status
        #: (monotonic time received, d) of the recent acknowledgements that carried ``ts``.
        self._samples: deque[tuple[float, float]] = deque(maxlen=SKEW_SAMPLES)
        #: Wall minus monotonic clock at the last sample: a change means the clock was set.
        self._step_ref: float | None = None
        self.too_old = 0
        self._unlogged = 0
        self._oldest_unlogged: datetime | None = None
        self._logged_at = float("-inf")

    # -- the cloud's clock ---------------------------------------------------------------------
    def observe_ack(self, payload: bytes) -> None:
        """A stored acknowledgement arrived (just now)."""
        at = sent_at(payload)
        if at is None:
            return
        wall, mono = time.time(), time.monotonic()
        ref = wall - mono
        if self._step_ref is not None and abs(ref - self._step_ref) > STEP_S:
            self._samples.clear()  # the clock was set: what was measured before is void
        self._step_ref = ref
        self._samples.append((mono, wall - at.timestamp()))

    def offset_s(self) -> float | None:
        """This clock minus the bridges', as well as known: the smallest ``d`` of the
        acknowledgements of the last SKEW_WINDOW_S since the clock was last set (too large by
        the smallest transit); None without any."""
        now = time.monotonic()
        recent = [d for at, d in self._samples if now - at <= SKEW_WINDOW_S]
        return min(recent) if recent else None

    def cloud_unsynchronised(self) -> bool | None:
        """True when this clock is more than MAX_SKEW_S off the bridges' (see the module)."""
        offset = self.offset_s()
        return None if offset is None else abs(offset) > self._max_skew_s

    def os_unsynchronised(self) -> bool | None:
        return self._os_status()

    def unsynchronised(self) -> dict[str, bool | None]:
        """Per source (``os``, ``cloud``): True, False, or None when it cannot tell."""
        return {"os": self.os_unsynchronised(), "cloud": self.cloud_unsynchronised()}

    # -- readings too old ----------------------------------------------------------------------
    def check_ages(self, captures: Iterable[Capture], now: datetime | None = None) -> int:
        """Count the captures older than MAX_AGE_DAYS (they are still sent); log at most once per
        LOG_EVERY_S. Returns how many of these were."""
        floor = (now or datetime.now(UTC)) - self._max_age
        old = [c.ts for c in captures if c.ts < floor]
        if old:
            self.too_old += len(old)
            self._unlogged += len(old)
            oldest = min(old)
            if self._oldest_unlogged is None or oldest < self._oldest_unlogged:
                self._oldest_unlogged = oldest
        if self._unlogged and time.monotonic() - self._logged_at >= LOG_EVERY_S:
            self._logged_at = time.monotonic()
            assert self._oldest_unlogged is not None
            log.warning(
                "%d readings captured stamped more than %s back (oldest %s): the cloud "
                "dead-letters them ts_too_old (sent anyway, replayable); check the chargers' "
                "and this gateway's clocks",
                self._unlogged,
                self._max_age,
                self._oldest_unlogged.isoformat(),
            )
            self._unlogged, self._oldest_unlogged = 0, None
        return len(old)
