"""Per-charger state that must never go backwards: the last-value cache (guarantee 3) and the
charger -> gateway bindings (guarantee 6). Both are warmed from InfluxDB at start, so they
survive restarts: what is stored is the record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from processor.lineproto import ns_to_datetime


@dataclass(frozen=True, slots=True)
class Stamp:
    """What decides "newer": the reading's own ts (integer ns, as stored), then its seq."""

    ts_ns: int
    seq: int
    gateway_id: str

    @property
    def ts(self) -> datetime:
        return ns_to_datetime(self.ts_ns)


class LastValueCache:
    def __init__(self) -> None:
        self._latest: dict[str, Stamp] = {}

    def offer(self, charger_id: str, stamp: Stamp) -> bool:
        """Keep ``stamp`` if it is newer than what we hold (a late or replayed reading is not,
        nor a warm-up seed older than what arrived meanwhile); True if it was kept."""
        held = self._latest.get(charger_id)
        if held is not None and (held.ts_ns, held.seq) >= (stamp.ts_ns, stamp.seq):
            return False
        self._latest[charger_id] = stamp
        return True

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
