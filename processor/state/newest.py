"""What this bridge wrote of the newest-stored state (:mod:`telemetry_common.newest_state`), so
a batch writes points only for what it advanced: per charger its newest stored reading, per
gateway epoch its newest reading by time and its highest seq.

A batch's points are written after its readings are stored and before it is acknowledged; what
a point says is only ever what InfluxDB holds. Replayed dead letters advance the chargers (they
are stored readings) but not the gateways' seqs (they belong to an older conversation, as in
gap tracking).
"""

from __future__ import annotations

from collections.abc import Iterable

from telemetry_common.newest_state import (
    ChargerMark,
    GatewayKey,
    GatewayMark,
    charger_line,
    gateway_line,
    offer_charger,
)


class NewestState:
    """This bridge's points of the state, as last written (or seeded from its own points)."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self._chargers: dict[str, ChargerMark] = {}
        self._gateways: dict[GatewayKey, GatewayMark] = {}

    def lines(
        self,
        chargers: Iterable[tuple[str, ChargerMark]],
        gateways: Iterable[tuple[GatewayKey, list[int], list[int]]],
    ) -> list[str]:
        """The points of what ``chargers`` ((charger, its newest stored reading of the batch))
        and ``gateways`` ((gateway, epoch), stored seqs, their ts) advanced; remembered as
        written (a refused state point is a hint lost: the next advance writes it again, and the
        warm-up also reads a recent window of raw points)."""
        out = []
        for charger_id, seen in chargers:
            if offer_charger(self._chargers, charger_id, seen):
                out.append(charger_line(self.bridge, charger_id, seen))
        advanced: dict[GatewayKey, GatewayMark] = {}
        for key, seqs, nss in gateways:
            if not seqs:
                continue
            k = max(range(len(seqs)), key=seqs.__getitem__)
            mark = GatewayMark(max(nss), seqs[k], nss[k])
            held = advanced.get(key) or self._gateways.get(key)
            merged = mark.merged(held)
            if merged != held:
                advanced[key] = merged
        for key, mark in advanced.items():
            self._gateways[key] = mark
            out.append(gateway_line(self.bridge, key, mark))
        return out

    def seed(
        self, chargers: dict[str, ChargerMark], gateways: dict[GatewayKey, GatewayMark]
    ) -> None:
        """Start from what the state already holds (warm-up): a batch then writes only what
        advances beyond it."""
        for charger_id, seen in chargers.items():
            offer_charger(self._chargers, charger_id, seen)
        for key, mark in gateways.items():
            self._gateways[key] = mark.merged(self._gateways.get(key))

    def __len__(self) -> int:
        return len(self._chargers) + len(self._gateways)
