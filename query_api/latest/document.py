"""The ``latest`` answer: a snapshot as a :class:`~query_api.readings.LatestReading` document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from query_api.latest.snapshot import Snapshot
from query_api.latest.state import charger_state
from query_api.settings import ApiSettings
from telemetry_common.schema import format_ts

Source = Literal["mirror", "influxdb"]


def latest_body(
    snapshot: Snapshot,
    source: Source,
    *,
    now: datetime,
    gateway_state: str | None,
    settings: ApiSettings,
) -> dict[str, Any]:
    """The :class:`~query_api.readings.LatestReading` document as a plain dict (the hot path
    skips building and validating a model)."""
    age_s = round((now - snapshot.ts).total_seconds(), 3)
    return {
        "charger_id": snapshot.charger_id,
        "gateway_id": snapshot.gateway_id,
        "evse_id": snapshot.evse_id,
        "connector_id": snapshot.connector_id,
        "seq": snapshot.seq,
        "ts": format_ts(snapshot.ts),
        "status": snapshot.status,
        "values": snapshot.values,
        "age_s": age_s,
        "state": charger_state(
            age_s,
            gateway_state,
            stale_after_s=settings.state_stale_after_s,
            offline_after_s=settings.state_offline_after_s,
        ),
        "source": source,
    }
