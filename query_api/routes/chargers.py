"""``/v1/chargers/{charger_id}/...``: latest reading and history, for keys of role ``read``."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query

from query_api.auth import require
from query_api.deps import Influx, Now, Settings
from query_api.problems import ProblemError, problem_responses
from query_api.readings import (
    HistoryPage,
    LatestReading,
    row_to_bucket,
    row_to_latest,
    row_to_point,
)
from query_api.timespec import TimeSpecError, format_duration, parse_duration, resolve_window
from telemetry_common import influxql
from telemetry_common.ids import ID_PATTERN
from telemetry_common.influxql import Aggregate, QueryBuildError
from telemetry_common.schema import MAX_VALUE_KEYS, format_ts

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

ChargerId = Annotated[
    str,
    Path(
        pattern=ID_PATTERN,
        description="charger id, ^[A-Za-z0-9._-]{1,64}$",
        examples=["gw-1-cp001"],
    ),
]
_FIELDS_DOC: Final = "value keys, comma-separated or repeated (default: every field)"


@router.get(
    "/{charger_id}/latest",
    summary="The charger's newest reading and its age",
    responses=problem_responses(404),
)
async def latest(charger_id: ChargerId, influx: Influx, now: Now) -> LatestReading:
    series = await influx.query(influxql.latest_query(charger_id))
    rows = [row for s in series for row in s.rows()]
    if not rows:
        raise ProblemError(404, "not-found", f"no reading stored for charger {charger_id!r}")
    return row_to_latest(charger_id, rows[0], now)


def _split_fields(fields: list[str] | None) -> list[str] | None:
    if fields is None:
        return None
    names = [name.strip() for item in fields for name in item.split(",") if name.strip()]
    if not names:
        return None
    if len(names) > MAX_VALUE_KEYS:
        raise ProblemError(422, "invalid-fields", f"at most {MAX_VALUE_KEYS} fields")
    for name in names:
        try:
            influxql.check_field(name)
        except QueryBuildError as exc:
            raise ProblemError(422, "invalid-fields", str(exc)) from exc
    return list(dict.fromkeys(names))


@router.get(
    "/{charger_id}/history",
    summary="Raw or downsampled points in a time range, oldest first",
    response_model_exclude_none=True,
)
async def history(
    charger_id: ChargerId,
    influx: Influx,
    settings: Settings,
    now: Now,
    start: Annotated[
        str | None, Query(description="RFC 3339, `now` or relative (`-1h`); default end - 1h")
    ] = None,
    end: Annotated[
        str | None, Query(description="RFC 3339, `now` or relative; default now")
    ] = None,
    fields: Annotated[list[str] | None, Query(description=_FIELDS_DOC)] = None,
    limit: Annotated[int | None, Query(ge=1, description="most points (capped)")] = None,
    every: Annotated[
        str | None, Query(description="bucket width for downsampling (`30s`, `5m`, `1h`)")
    ] = None,
    agg: Annotated[
        Aggregate | None, Query(description="aggregate per bucket (needs every)")
    ] = None,
) -> HistoryPage:
    if limit is None:
        limit = settings.default_limit
    elif limit > settings.history_max_points:
        raise ProblemError(
            422,
            "limit-too-large",
            f"limit={limit} exceeds the maximum of {settings.history_max_points} points per page",
        )
    names = _split_fields(fields)
    try:
        window = resolve_window(
            start,
            end,
            now=now,
            default_range=settings.history_default_range,
            max_range=settings.history_max_range,
        )
        step = parse_duration(every) if every is not None else None
    except TimeSpecError as exc:
        raise ProblemError(422, "invalid-time", str(exc)) from exc
    if step is None and agg is not None:
        raise ProblemError(422, "invalid-aggregate", "agg needs every (e.g. every=5m&agg=mean)")
    if step is not None:
        if step < settings.history_min_every:
            raise ProblemError(
                422,
                "invalid-time",
                f"every={every} is below the minimum {format_duration(settings.history_min_every)}",
            )
        agg = agg or "mean"
    query = influxql.history_query(
        charger_id, names, window.start, window.end, limit, every=step, agg=agg
    )
    rows = [row for s in await influx.query(query) for row in s.rows()]
    if agg is None:
        points = [row_to_point(row) for row in rows]
    else:
        points = [row_to_bucket(row, agg, wildcard=names is None) for row in rows]
    return HistoryPage(
        charger_id=charger_id,
        start=format_ts(window.start),
        end=format_ts(window.end),
        fields=names,
        every=every,
        agg=agg,
        limit=limit,
        truncated=len(points) >= limit,
        points=points,
    )
