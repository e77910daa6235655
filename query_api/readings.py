"""Response models, and InfluxDB rows turned into readings and history points (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from query_api.latest.state import ChargerState
from query_api.resolution import Resolution
from telemetry_common.influxql import Aggregate
from telemetry_common.schema import format_ts
from telemetry_common.storage import META_FIELDS, TAG_KEYS

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_READING_EXAMPLE: Final[dict[str, Any]] = {
    "charger_id": "gw-1-cp001",
    "gateway_id": "gw-1",
    "evse_id": 1,
    "connector_id": 1,
    "seq": 1842,
    "ts": "2026-05-01T12:00:00.000Z",
    "status": "Charging",
    "values": {"energy_wh": 12345.6, "power_w": 7200.0, "current_a": 31.8},
}


class LatestReading(BaseModel):
    """A charger's newest stored reading, shaped like a docs/design.md reading, plus its age."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_READING_EXAMPLE, "age_s": 4.2, "state": "online", "source": "mirror"}]
        }
    )

    charger_id: str
    gateway_id: str | None
    evse_id: int
    connector_id: int
    seq: int | None
    ts: str = Field(description="the meter's time, RFC 3339 UTC with milliseconds")
    status: str | None
    values: dict[str, float]
    age_s: float = Field(description="seconds from ts to the moment of the answer")
    state: ChargerState = Field(
        description="online / stale / offline, from age_s and the gateway's birth/last will"
    )
    source: Literal["mirror", "influxdb"] = Field(
        description="mirror: the API's copy of the live feed; influxdb: read from the store"
    )


class HistoryPoint(BaseModel):
    """One raw reading, or one bucket of a downsampled series (then only ts and values)."""

    ts: str
    gateway_id: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    seq: int | None = None
    status: str | None = None
    values: dict[str, float]


class HistoryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "charger_id": "gw-1-cp001",
                    "start": "2026-05-01T11:00:00.000Z",
                    "end": "2026-05-01T12:00:00.000Z",
                    "fields": ["power_w"],
                    "resolution": "raw",
                    "limit": 1000,
                    "truncated": False,
                    "points": [
                        {
                            "ts": "2026-05-01T11:00:05.000Z",
                            "gateway_id": "gw-1",
                            "evse_id": 1,
                            "connector_id": 1,
                            "seq": 1700,
                            "status": "Charging",
                            "values": {"power_w": 7200.0},
                        }
                    ],
                }
            ]
        }
    )

    charger_id: str
    start: str
    end: str
    fields: list[str] | None = Field(default=None, description="None: every field")
    every: str | None = Field(
        default=None, description="bucket width (a rollup-served page: at least the rollup's)"
    )
    agg: Aggregate | None = None
    resolution: Resolution = Field(
        description="where the points come from: raw readings, 1-minute or 1-hour rollups "
        "(also in the X-Resolution header)"
    )
    limit: int
    truncated: bool = Field(description="true when limit points were returned: more may follow")
    next_cursor: str | None = Field(
        default=None,
        description="pass as `cursor` (with the same parameters) for the next page; "
        "absent on the last page",
    )
    points: list[HistoryPoint]


def from_epoch_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def tag_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seq(value: Any) -> int | None:
    return int(value) if _is_number(value) else None


def row_values(row: dict[str, Any]) -> dict[str, float]:
    skip = {"time", *TAG_KEYS, *META_FIELDS}
    return {k: float(v) for k, v in row.items() if k not in skip and _is_number(v)}


def row_to_point(row: dict[str, Any]) -> dict[str, Any]:
    """A raw row as a :class:`HistoryPoint` document (a plain dict: no model on the hot path;
    absent tags and fields are left out, as ``response_model_exclude_none`` would)."""
    point: dict[str, Any] = {"ts": format_ts(from_epoch_ns(int(row["time"])))}
    gateway_id = row.get("gateway_id")
    if gateway_id is not None:
        point["gateway_id"] = gateway_id
    for key in ("evse_id", "connector_id"):
        value = tag_int(row.get(key))
        if value is not None:
            point[key] = value
    seq = _seq(row.get("seq"))
    if seq is not None:
        point["seq"] = seq
    status = row.get("status")
    if isinstance(status, str):
        point["status"] = status
    point["values"] = row_values(row)
    return point


def row_to_bucket(row: dict[str, Any], agg: Aggregate, *, wildcard: bool) -> dict[str, Any]:
    """A downsampled row as a :class:`HistoryPoint` document. With ``wildcard`` (``{agg}(*)``),
    InfluxDB named the columns ``{agg}_{field}``: they lose the prefix; otherwise they are
    already named after the fields."""
    prefix = f"{agg}_" if wildcard else ""
    values: dict[str, float] = {}
    for key, value in row.items():
        if key == "time" or not _is_number(value):
            continue
        name = key.removeprefix(prefix)
        if name not in META_FIELDS:
            values[name] = float(value)
    return {"ts": format_ts(from_epoch_ns(int(row["time"]))), "values": values}
