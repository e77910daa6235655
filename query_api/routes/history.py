"""``/v1/chargers/{id}/history``: raw or downsampled points, time-cursor paging (role ``read``).

Paging: a page that is full carries ``next_cursor``. It pins the window (``end`` included, so a
relative ``end`` such as ``now`` does not move between pages) and where the next page starts:
for raw points the last returned time plus the series (gateway, evse, connector) already
returned at that time, so points sharing a timestamp are neither repeated nor skipped; for
buckets the start of the next bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.auth import HEADER, SECURITY, authorize
from query_api.deps import influx_of
from query_api.pagecache import PageCache
from query_api.params import (
    END_DOC,
    FIELDS_DOC,
    START_DOC,
    UncheckedChargerId,
    checked_path_and_query,
    query_parameters,
    split_fields,
    window,
)
from query_api.problems import ProblemError, problem_responses
from query_api.readings import HistoryPage, from_epoch_ns, row_to_bucket, row_to_point
from query_api.settings import ApiSettings
from query_api.timespec import TimeSpecError, Window, format_duration, parse_duration
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.influxql import Aggregate
from telemetry_common.schema import TS_MAX, TS_MIN, format_ts

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    responses=problem_responses(401, 403, 422, 502, 503),
)

_EPOCH_NS_MIN = int((TS_MIN - from_epoch_ns(0)).total_seconds()) * 10**9
_EPOCH_NS_MAX = int((TS_MAX - from_epoch_ns(0)).total_seconds()) * 10**9


def _ns(ts: datetime) -> int:
    delta = ts - from_epoch_ns(0)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _series_key(row: dict[str, Any]) -> str:
    return f"{row.get('gateway_id')}|{row.get('evse_id')}|{row.get('connector_id')}"


def _resume(
    cursors: cursor.Cursors, text: str, query: str, max_span: timedelta
) -> tuple[Window, datetime, set[str]]:
    """(window of the next page, the original start, series already returned at its start).

    The cursor must carry our signature, and its window must be one the first request could
    have asked: from the original start ``o`` to the end ``e`` at most ``max_span``
    (HISTORY_MAX_RANGE, plus the rounding out of a downsampled window), the resume point ``t``
    within it. A resumed query then spans no more than the first request could."""
    try:
        body = cursors.decode(text, "history", query)
        t, first, end, skip = body["t"], body["o"], body["e"], body.get("s", [])
        ints = all(
            isinstance(v, int) and _EPOCH_NS_MIN <= v <= _EPOCH_NS_MAX for v in (t, first, end)
        )
        if not ints or not first <= t < end or not isinstance(skip, list) or len(skip) > 1000:
            raise cursor.CursorError("the cursor is damaged")  # noqa: TRY301
        span = from_epoch_ns(end) - from_epoch_ns(first)
        if span > max_span:
            raise cursor.CursorError(  # noqa: TRY301
                f"the cursor's range {format_duration(span)} exceeds the maximum of "
                f"{format_duration(max_span)}"
            )
    except (cursor.CursorError, KeyError) as exc:
        raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    return (
        Window(from_epoch_ns(t), from_epoch_ns(end)),
        from_epoch_ns(first),
        {str(s) for s in skip},
    )


def _aligned(win: Window, step: timedelta, start: str | None, end: str | None) -> Window:
    """A relative (or omitted) edge of a downsampled window moved onto the bucket grid (epoch
    aligned, as InfluxDB's ``GROUP BY time``): start down, end up. The page then holds whole
    buckets, and every request within one bucket width asks the same question (cacheable)."""
    width = _ns(from_epoch_ns(0) + step)
    lo, hi = _ns(win.start), _ns(win.end)
    if start is None or not _absolute(start):
        lo -= lo % width
    if end is None or not _absolute(end):
        hi += -hi % width
    return Window(from_epoch_ns(lo), from_epoch_ns(min(hi, _EPOCH_NS_MAX)))


def _absolute(text: str) -> bool:
    return text != "now" and not text.startswith("-")


class HistoryQuery(BaseModel):
    """The query parameters of ``history`` (read by :func:`~query_api.params.query_of`,
    documented from here)."""

    model_config = ConfigDict(extra="ignore")

    start: str | None = Field(default=None, description=START_DOC, examples=["-1h"])
    end: str | None = Field(default=None, description=END_DOC, examples=["now"])
    fields: list[str] | None = Field(
        default=None, description=FIELDS_DOC, examples=["power_w,soc_pct"]
    )
    limit: int | None = Field(default=None, ge=1, description="most points per page (capped)")
    every: str | None = Field(
        default=None,
        description="bucket width for downsampling (`30s`, `5m`, `1h`); a relative `start` "
        "or `end` is then rounded out to whole buckets",
        examples=["5m"],
    )
    agg: Aggregate | None = Field(
        default=None, description="aggregate per bucket (needs every; default mean)"
    )
    cursor: str | None = Field(
        default=None, description="next_cursor of the previous page (same parameters)"
    )


@router.get(
    "/{charger_id}/history",
    summary="Raw or downsampled points in a time range, oldest first, paged by time",
    response_model=HistoryPage,
    response_model_exclude_none=True,
    openapi_extra={"security": SECURITY, "parameters": query_parameters(HistoryQuery)},
)
async def history(request: Request, charger_id: UncheckedChargerId) -> Response:
    # A hot route (query_api.lean): the key, then the id, then the query are checked here, by
    # the functions every route uses (a comment: FastAPI would publish a docstring).
    state = request.app.state
    authorize(state, request.headers.get(HEADER), "read")
    charger_id, q = checked_path_and_query(request, charger_id, HistoryQuery)
    start, end, fields, limit, every, agg, cursor_ = (
        q.start, q.end, q.fields, q.limit, q.every, q.agg, q.cursor
    )  # fmt: skip
    settings: ApiSettings = state.settings
    influx = influx_of(request)
    now = state.clock.now()
    if limit is None:
        limit = settings.default_limit
    elif limit > settings.history_max_points:
        raise ProblemError(
            422,
            "limit-too-large",
            f"limit={limit} exceeds the maximum of {settings.history_max_points} points per page",
        )
    names = split_fields(fields)
    try:
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
    query = cursor.fingerprint("history", charger_id, names, every, agg)
    skip: set[str] = set()
    cursors: cursor.Cursors = state.cursors
    if cursor_ is not None:
        # A downsampled window is rounded out by less than one bucket at each edge (_aligned).
        slack = 2 * step if step is not None else timedelta(0)
        win, first, skip = _resume(cursors, cursor_, query, settings.history_max_range + slack)
    else:
        win = window(
            start,
            end,
            now=now,
            default_range=settings.history_default_range,
            max_range=settings.history_max_range,
        )
        if step is not None:
            win = _aligned(win, step, start, end)
        first = win.start
    page = _Page(charger_id, names, every, step, agg, limit, query, win, first, skip, cursors)
    cache: PageCache = state.history_cache
    if step is None or cursor_ is not None or not cache.enabled:
        body = await page.render(influx)
    else:
        key = (charger_id, tuple(names or ()), names is None, _ns(win.start), _ns(win.end))
        body = await cache.get(
            (*key, every, agg, limit), state.clock.mono(), lambda: page.render(influx)
        )
    return Response(body, media_type="application/json")


@dataclass(frozen=True, slots=True)
class _Page:
    charger_id: str
    names: list[str] | None
    every: str | None
    step: timedelta | None
    agg: Aggregate | None
    limit: int
    query: str
    win: Window
    first: datetime
    skip: set[str]
    cursors: cursor.Cursors

    async def render(self, influx: InfluxQL) -> bytes:
        """The :class:`HistoryPage` document as JSON (built as dicts: a page of models cost
        three times as much)."""
        names, win, limit, skip, step = self.names, self.win, self.limit, self.skip, self.step
        q = influxql.history_query(
            self.charger_id, names, win.start, win.end, limit + len(skip), every=step, agg=self.agg
        )
        rows = [row for s in await influx.query(q) for row in s.rows()]
        next_cursor: str | None = None
        body = {"o": _ns(self.first), "e": _ns(win.end)}
        if self.agg is None:
            t0 = _ns(win.start)
            kept = [r for r in rows if not (int(r["time"]) == t0 and _series_key(r) in skip)]
            page = kept[:limit]
            more = len(kept) > limit or len(rows) == limit + len(skip)
            if more and page:
                t = int(page[-1]["time"])
                at_t = {_series_key(r) for r in page if int(r["time"]) == t}
                at_t |= skip if t == t0 else set()
                cur = {**body, "t": t, "s": sorted(at_t)}
                next_cursor = self.cursors.encode("history", self.query, cur)
            points = [row_to_point(row) for row in page]
        else:
            assert step is not None
            more = len(rows) >= limit
            if more:
                t = _ns(from_epoch_ns(int(rows[-1]["time"])) + step)
                if t < body["e"]:
                    next_cursor = self.cursors.encode("history", self.query, {**body, "t": t})
            points = [row_to_bucket(row, self.agg, wildcard=names is None) for row in rows]
        doc: dict[str, Any] = {
            "charger_id": self.charger_id,
            "start": format_ts(self.first),
            "end": format_ts(win.end),
        }
        optional = {"fields": names, "every": self.every, "agg": self.agg}
        doc.update((k, v) for k, v in optional.items() if v is not None)
        doc.update(limit=limit, truncated=more)
        if next_cursor is not None:
            doc["next_cursor"] = next_cursor
        doc["points"] = points
        return orjson.dumps(doc)
