"""The last-value cache: per charger, the stamp of its newest stored reading (guarantee 3).

It never goes backwards: a late or replayed reading does not replace a newer one. It is warmed
from InfluxDB at start (:mod:`processor.state.storage`), so it survives restarts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stamp:
    """What decides "newer": the reading's own ts (integer ns, as stored), then its seq."""

    ts_ns: int
    seq: int
    gateway_id: str


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

    def gateways(self) -> Iterator[tuple[str, str]]:
        """``(charger, gateway that sent its newest reading)`` for every charger held."""
        for charger_id, stamp in self._latest.items():
            yield charger_id, stamp.gateway_id

    def __len__(self) -> int:
        return len(self._latest)
