"""Per-charger state that must never go backwards: the last-value cache (guarantee 3) and the
charger -> gateway bindings (guarantee 6). Both are warmed from InfluxDB at start, so they
survive restarts: what is stored is the record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from telemetry_common.schema import Reading


@dataclass(frozen=True, slots=True)
class Stamp:
    """What decides "newer": the reading's own ts, then its seq."""

    ts: datetime
    seq: int
    gateway_id: str


class LastValueCache:
    def __init__(self) -> None:
        self._latest: dict[str, Stamp] = {}

    def offer(self, gateway_id: str, reading: Reading) -> bool:
        """Keep ``reading`` if it is newer than what we hold; a late or replayed one is not."""
        held = self._latest.get(reading.charger_id)
        if held is not None and (held.ts, held.seq) >= (reading.ts, reading.seq):
            return False
        self._latest[reading.charger_id] = Stamp(reading.ts, reading.seq, gateway_id)
        return True

    def seed(self, charger_id: str, stamp: Stamp) -> None:
        held = self._latest.get(charger_id)
        if held is None or (held.ts, held.seq) < (stamp.ts, stamp.seq):
            self._latest[charger_id] = stamp

    def get(self, charger_id: str) -> Stamp | None:
        return self._latest.get(charger_id)

    def __len__(self) -> int:
        return len(self._latest)


class Bindings:
    """Which gateway may send readings for a charger.

    First-come (default): a charger is bound to the first gateway whose reading for it was
    accepted. Provisioned: only the given pairs are accepted, every other charger is refused.
    """

    def __init__(self, provisioned: Mapping[str, str] | None = None) -> None:
        self.provisioned = provisioned is not None
        self._bound: dict[str, str] = dict(provisioned or {})

    def claim(self, gateway_id: str, charger_id: str) -> str | None:
        """None if ``gateway_id`` may send for ``charger_id`` (binding it if new), else the
        gateway the charger is bound to (``""`` when provisioned and not listed)."""
        bound = self._bound.get(charger_id)
        if bound is None:
            if self.provisioned:
                return ""
            self._bound[charger_id] = gateway_id
            return None
        return None if bound == gateway_id else bound

    def seed(self, charger_id: str, gateway_id: str) -> None:
        if not self.provisioned:
            self._bound[charger_id] = gateway_id

    def __len__(self) -> int:
        return len(self._bound)
