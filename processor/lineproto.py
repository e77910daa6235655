"""Readings -> InfluxDB line protocol (DESIGN.md schema), built by hand: 3-4x faster than
``influxdb_client.Point`` (PERFORMANCE.md). Ids and value keys are allow-listed by the schema, so
tags and field keys need no escaping; the one free-text field, ``status``, is escaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from telemetry_common.schema import Reading
from telemetry_common.storage import MEASUREMENT

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def ts_ns(ts: datetime) -> int:
    """Exact integer nanoseconds since the epoch (no float rounding)."""
    return (ts - _EPOCH) // _MICROSECOND * 1000


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_line(gateway_id: str, r: Reading) -> str:
    """One point; its key (measurement, tags, time) makes a replayed reading overwrite itself."""
    fields = [f"{k}={float(v)!r}" for k, v in r.values.items()]
    if r.status is not None:
        fields.append(f"status={_string_field(r.status)}")
    fields.append(f"seq={r.seq}i")
    return (
        f"{MEASUREMENT},charger_id={r.charger_id},connector_id={r.connector_id},"
        f"evse_id={r.evse_id},gateway_id={gateway_id} {','.join(fields)} {ts_ns(r.ts)}"
    )
