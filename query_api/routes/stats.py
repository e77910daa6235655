"""``/v1/chargers/{id}/stats``: count, mean, median, stddev, min, max per field (role ``read``).

Computed by InfluxDB in one query over ``[start, end)`` and all of the charger's connectors.
``stddev`` is the sample standard deviation (n - 1), as Python's ``statistics.stdev``; with one
value it is null. ``median`` of an even count is the mean of the two middle values.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from query_api.auth import require
from query_api.deps import Influx, Now, Settings
from query_api.params import ChargerId, End, Fields, Start, split_fields, window
from query_api.problems import problem_responses
from telemetry_common import influxql
from telemetry_common.schema import format_ts
from telemetry_common.storage import META_FIELDS

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)


class FieldStats(BaseModel):
    count: int
    mean: float | None
    median: float | None
    stddev: float | None = Field(description="sample standard deviation; null below 2 values")
    min: float | None
    max: float | None


class Stats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "charger_id": "gw-1-cp001",
                    "start": "2026-04-30T12:00:00.000Z",
                    "end": "2026-05-01T12:00:00.000Z",
                    "fields": {
                        "power_w": {
                            "count": 1440,
                            "mean": 3650.2,
                            "median": 3600.0,
                            "stddev": 2101.7,
                            "min": 0.0,
                            "max": 7400.0,
                        }
                    },
                }
            ]
        }
    )

    charger_id: str
    start: str
    end: str
    fields: dict[str, FieldStats] = Field(
        description="per field; a requested field without values has count 0"
    )


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def stats_from_row(row: dict[str, Any], names: list[str] | None) -> dict[str, FieldStats]:
    """Columns ``{stat}_{field}`` of one row -> stats per field (meta fields dropped)."""
    fields = names if names is not None else sorted(
        {k.removeprefix("count_") for k in row if k.startswith("count_")} - set(META_FIELDS)
    )  # fmt: skip
    out: dict[str, FieldStats] = {}
    for f in fields:
        count = _number(row.get(f"count_{f}"))
        out[f] = FieldStats(
            count=int(count or 0),
            **{s: _number(row.get(f"{s}_{f}")) for s in influxql.STATS if s != "count"},
        )
    return out


@router.get("/{charger_id}/stats", summary="count, mean, median, stddev, min, max per field")
async def stats(
    charger_id: ChargerId,
    influx: Influx,
    settings: Settings,
    now: Now,
    start: Start = None,
    end: End = None,
    fields: Fields = None,
) -> Stats:
    names = split_fields(fields)
    win = window(
        start,
        end,
        now=now,
        default_range=settings.stats_default_range,
        max_range=settings.stats_max_range,
    )
    series = await influx.query(influxql.stats_query(charger_id, names, win.start, win.end))
    rows = [row for s in series for row in s.rows()]
    return Stats(
        charger_id=charger_id,
        start=format_ts(win.start),
        end=format_ts(win.end),
        fields=stats_from_row(rows[0] if rows else {}, names),
    )
