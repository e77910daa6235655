"""A charger's newest reading as the API holds it, from a live message or an InfluxDB row (pure).

"Newer" is decided as in the processor's last-value cache: the reading's own ``ts``, then ``seq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from query_api.readings import from_epoch_ns, row_values, tag_int
from telemetry_common.ids import Id
from telemetry_common.schema import Reading


class LiveReading(Reading):
    """A ``{root}/live/{charger}`` payload: a validated reading plus the gateway that sent it."""

    gateway_id: Id


@dataclass(frozen=True, slots=True)
class Snapshot:
    charger_id: str
    gateway_id: str | None
    evse_id: int
    connector_id: int
    seq: int | None
    ts: datetime
    status: str | None
    values: dict[str, float]

    @property
    def order(self) -> tuple[datetime, int]:
        return self.ts, self.seq if self.seq is not None else -1


def from_live(payload: bytes) -> Snapshot | None:
    """The snapshot in a live payload; None if it is not a valid one."""
    try:
        live = LiveReading.model_validate_json(payload)
    except ValidationError:
        return None
    return Snapshot(
        charger_id=live.charger_id,
        gateway_id=live.gateway_id,
        evse_id=live.evse_id,
        connector_id=live.connector_id,
        seq=live.seq,
        ts=live.ts,
        status=live.status,
        values=dict(live.values),
    )


def from_row(charger_id: str, row: dict[str, Any]) -> Snapshot:
    """A ``SELECT *`` row of ``readings`` (times in ns)."""
    status = row.get("status")
    seq = row.get("seq")
    return Snapshot(
        charger_id=charger_id,
        gateway_id=row.get("gateway_id"),
        evse_id=tag_int(row.get("evse_id")) or 0,
        connector_id=tag_int(row.get("connector_id")) or 0,
        seq=int(seq) if isinstance(seq, int | float) and not isinstance(seq, bool) else None,
        ts=from_epoch_ns(int(row["time"])),
        status=status if isinstance(status, str) else None,
        values=row_values(row),
    )


def newest(*snapshots: Snapshot | None) -> Snapshot | None:
    """The newest of the given snapshots (None ignored)."""
    present = [s for s in snapshots if s is not None]
    return max(present, key=lambda s: s.order) if present else None
