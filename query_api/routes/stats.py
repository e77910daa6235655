"""``/v1/chargers/{id}/stats``: count, mean, median, stddev, min, max per field (role ``read``).

Computed by InfluxDB in one query over ``[start, end)`` and all of the charger's connectors.
``stddev`` is the sample standard deviation (n - 1), as Python's ``statistics.stdev``; with one
value it is null. ``median`` of an even count is the mean of the two middle values.

A window that raw readings no longer cover (older than RAW_RETENTION) is answered from the
rollups (query_api.resolution: 1-minute ones up to ROLLUP_1H_AFTER, else 1-hour ones), the window
widened to whole rollup buckets: ``count`` (the sum of the buckets' counts), ``mean`` (weighted by
those counts), ``min`` and ``max`` are exact; ``median`` and ``stddev`` cannot be derived from
rollups and are null. ``resolution`` (body and X-Resolution header) says which store answered.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from query_api.auth import require
from query_api.deps import Influx, Now, Settings
from query_api.params import ChargerId, End, Fields, Start, split_fields, window
from query_api.problems import ProblemError, problem_responses
from query_api.readings import from_epoch_ns
from query_api.resolution import (
    RESOLUTION_HEADER,
    WIDTHS,
    Resolution,
    ResolutionError,
    aligned,
    choose,
)
from query_api.rollups import RollupFields
from query_api.timespec import Window
from telemetry_common import influxql
from telemetry_common.influxql import Rollup
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
    median: float | None = Field(description="null when the answer comes from rollups")
    stddev: float | None = Field(
        description="sample standard deviation; null below 2 values or from rollups"
    )
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
                    "resolution": "raw",
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
    resolution: Resolution = Field(
        description="raw readings, or 1-minute / 1-hour rollups (then median and stddev null)"
    )
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
    request: Request,
    response: Response,
    charger_id: ChargerId,
    influx: Influx,
    settings: Settings,
    now: Now,
    start: Start = None,
    end: End = None,
    fields: Fields = None,
    resolution: Annotated[
        Resolution | None,
        Query(description="force the store: `raw` readings, `1m` or `1h` rollups"),
    ] = None,
) -> Stats:
    names = split_fields(fields)
    win = window(
        start,
        end,
        now=now,
        default_range=settings.stats_default_range,
        max_range=settings.stats_max_range,
    )
    try:
        chosen = choose(
            win.start,
            win.end,
            now=now,
            step=None,
            forced=resolution,
            rules=settings.retentions,
            prefer_raw=True,
        )
    except ResolutionError as exc:
        raise ProblemError(422, "invalid-resolution", str(exc)) from exc
    response.headers[RESOLUTION_HEADER] = chosen
    if chosen == "raw":
        series = await influx.query(influxql.stats_query(charger_id, names, win.start, win.end))
        rows = [row for s in series for row in s.rows()]
        result = stats_from_row(rows[0] if rows else {}, names)
    else:
        rollup: Rollup = chosen
        win = Window(*aligned(win.start, win.end, WIDTHS[rollup], from_epoch_ns(0)))
        known: RollupFields = request.app.state.rollup_fields
        keys = names or await known.get(influx, rollup, request.app.state.clock.mono())
        rows = []
        if keys:
            q = influxql.rollup_stats_query(charger_id, keys, win.start, win.end, rollup=rollup)
            rows = [row for s in await influx.query(q) for row in s.rows()]
        result = stats_from_row(rows[0] if rows else {}, keys)
        if names is None:
            result = {k: v for k, v in result.items() if v.count > 0}
    return Stats(
        charger_id=charger_id,
        start=format_ts(win.start),
        end=format_ts(win.end),
        resolution=chosen,
        fields=result,
    )
