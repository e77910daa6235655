"""The charger index behind ``GET /v1/chargers``: the newest point per charger in InfluxDB
(cached for ``chargers_cache_s``), merged with the live mirror (newer wins)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from query_api.mirror import LiveMirror
from query_api.readings import from_epoch_ns
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL


@dataclass(frozen=True, slots=True)
class Seen:
    charger_id: str
    gateway_id: str | None
    last_seen: datetime


class ChargerIndex:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._stored: dict[str, Seen] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _load(self, influx: InfluxQL, mono: float) -> dict[str, Seen]:
        async with self._lock:
            if mono - self._loaded_at <= self._ttl_s:
                return self._stored
            stored: dict[str, Seen] = {}
            for s in await influx.query(influxql.newest_per_charger_query()):
                charger = s.tags.get("charger_id")
                if not charger:
                    continue
                for row in s.rows():
                    seen = Seen(charger, s.tags.get("gateway_id"), from_epoch_ns(int(row["time"])))
                    held = stored.get(charger)
                    if held is None or held.last_seen < seen.last_seen:
                        stored[charger] = seen
            self._stored, self._loaded_at = stored, mono
            return stored

    async def chargers(self, influx: InfluxQL, mirror: LiveMirror, mono: float) -> list[Seen]:
        """Every known charger, sorted by id."""
        merged = dict(await self._load(influx, mono))
        for snap in mirror.snapshots():
            held = merged.get(snap.charger_id)
            if held is None or held.last_seen < snap.ts:
                merged[snap.charger_id] = Seen(snap.charger_id, snap.gateway_id, snap.ts)
        return [merged[k] for k in sorted(merged)]
