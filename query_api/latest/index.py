"""The charger index behind ``GET /v1/chargers``: the newest point per charger in InfluxDB
(the newest-stored state and a recent window: :func:`telemetry_common.newest_state.
newest_chargers`; cached for ``chargers_cache_s``), merged with the live mirror (newer wins).

The same answer confirms the live mirror in bulk (:mod:`query_api.latest.sweep`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from query_api.latest.mirror import LiveMirror
from query_api.readings import from_epoch_ns
from telemetry_common.influx_query import InfluxQL
from telemetry_common.newest_state import ChargerMark, newest_chargers

#: Mirror entries confirmed between two yields to the event loop.
SWEEP_SLICE = 1000


@dataclass(frozen=True, slots=True)
class Seen:
    charger_id: str
    gateway_id: str | None
    last_seen: datetime
    seq: int | None = None

    @property
    def order(self) -> tuple[datetime, int]:
        """As :attr:`query_api.latest.snapshot.Snapshot.order`: ts, then seq."""
        return self.last_seen, self.seq if self.seq is not None else -1


async def _seen(marks: dict[str, ChargerMark]) -> dict[str, Seen]:
    stored: dict[str, Seen] = {}
    for i, (charger, mark) in enumerate(marks.items(), start=1):
        if i % SWEEP_SLICE == 0:
            await asyncio.sleep(0)
        stored[charger] = Seen(charger, mark.gateway_id, from_epoch_ns(mark.ts_ns), mark.seq)
    return stored


class ChargerIndex:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._stored: dict[str, Seen] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def load(self, influx: InfluxQL, mono: float, *, fresh: bool = False) -> dict[str, Seen]:
        """The newest stored point per charger; from the cache unless it is older than the TTL
        (or ``fresh``: then it reflects InfluxDB as of ``mono`` or later)."""
        async with self._lock:
            if self._loaded_at >= mono or (not fresh and mono - self._loaded_at <= self._ttl_s):
                return self._stored
            # The newest-stored state and a recent window, not a scan of all history; 10,000
            # chargers are 10,000 series: streamed, and read in slices (a request waits a few
            # milliseconds at most, not the ~100 ms of the whole answer).
            stored = await _seen(await newest_chargers(influx))
            self._stored, self._loaded_at = stored, mono
            return stored

    async def chargers(self, influx: InfluxQL, mirror: LiveMirror, mono: float) -> list[Seen]:
        """Every known charger, sorted by id."""
        merged = dict(await self.load(influx, mono))
        for snap in mirror.snapshots():
            held = merged.get(snap.charger_id)
            if held is None or held.last_seen < snap.ts:
                merged[snap.charger_id] = Seen(snap.charger_id, snap.gateway_id, snap.ts, snap.seq)
        return [merged[k] for k in sorted(merged)]
