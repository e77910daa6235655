"""The last-value cache: per charger, the reading with the newest ``ts`` (guarantee 3)."""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_common.schema import Reading


@dataclass(frozen=True, slots=True)
class Latest:
    gateway_id: str
    reading: Reading


class LastValueCache:
    def __init__(self) -> None:
        self._latest: dict[str, Latest] = {}

    def offer(self, gateway_id: str, reading: Reading) -> bool:
        """Keep ``reading`` if it is newer than what we hold; a late or replayed one is not."""
        held = self._latest.get(reading.charger_id)
        if held is not None and (held.reading.ts, held.reading.seq) >= (reading.ts, reading.seq):
            return False
        self._latest[reading.charger_id] = Latest(gateway_id, reading)
        return True

    def get(self, charger_id: str) -> Latest | None:
        return self._latest.get(charger_id)

    def __len__(self) -> int:
        return len(self._latest)
