"""Energy-register checks: suspicious registers are flagged on the reading, never corrected.

Per charger and connector the newest register value seen (``energy_wh``: MeterValues,
``meterStart``, ``meterStop``) is remembered. A new value gets ``energy_suspect``:

- ``1``: the register went backwards (lower than the newest earlier value);
- ``2``: a ``0`` at ``Transaction.Begin`` (or a ``meterStart`` of 0) after a non-zero register --
  the classic charger bug that, taken as the session's baseline, books the whole meter reading as
  one session's energy.

Nothing already stored is rewritten and no offset is applied: the flagged value is sent as
measured, with the flag beside it. Every flagged value is logged (warning) and counted. The
register then follows the new value, so a meter swap or reset is flagged once, not forever.
A value older than the newest one seen (a queued reading delivered late) is not compared.
Memory is bounded (the oldest connectors are forgotten first); a restart starts afresh.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

log = logging.getLogger(__name__)

BACKWARDS: Final = 1
ZERO_AT_BEGIN: Final = 2
FLAG_KEY: Final = "energy_suspect"
ENERGY_KEY: Final = "energy_wh"


class EnergyGuard:
    def __init__(self, *, max_connectors: int = 100_000) -> None:
        self._last: dict[tuple[str, int], tuple[datetime, float]] = {}
        self._max = max_connectors
        self.flagged = 0

    def check(
        self, charger_id: str, connector_id: int, ts: datetime, wh: float, *, begin: bool
    ) -> int:
        """0 if the value is plausible, else :data:`BACKWARDS` or :data:`ZERO_AT_BEGIN`."""
        key = (charger_id, connector_id)
        prev = self._last.get(key)
        if prev is not None and ts < prev[0]:
            return 0  # late: compared with nothing, and it does not move the register
        verdict = 0
        if prev is not None:
            if begin and wh == 0 and prev[1] > 0:
                verdict = ZERO_AT_BEGIN
            elif wh < prev[1]:
                verdict = BACKWARDS
        self._last.pop(key, None)  # re-insert: dict order is least recently updated first
        self._last[key] = (ts, wh)
        if len(self._last) > self._max:
            del self._last[next(iter(self._last))]
        if verdict:
            self.flagged += 1
            log.warning(
                "energy register of %s connector %d is suspect (%s): %.3f Wh after %.3f Wh",
                charger_id,
                connector_id,
                "zero at Transaction.Begin" if verdict == ZERO_AT_BEGIN else "went backwards",
                wh,
                prev[1] if prev else 0.0,
                extra={"charger_id": charger_id, "energy_suspect": verdict},
            )
        return verdict

    def apply(
        self,
        charger_id: str,
        connector_id: int,
        ts: datetime,
        values: dict[str, float],
        *,
        begin: bool,
    ) -> None:
        """Check ``values[energy_wh]`` if present and add ``energy_suspect`` when flagged."""
        wh = values.get(ENERGY_KEY)
        if wh is None:
            return
        verdict = self.check(charger_id, connector_id, ts, wh, begin=begin)
        if verdict:
            values[FLAG_KEY] = float(verdict)
