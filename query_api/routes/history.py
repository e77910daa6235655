"""``/v1/chargers/{id}/history``: raw or downsampled points, time-cursor paging (role ``read``).

Paging: a page that is full carries ``next_cursor``. It pins the window (``end`` included, so a
relative ``end`` such as ``now`` does not move between pages) and where the next page starts:
for raw points the last returned time plus the series (gateway, evse, connector) already
returned at that time, so points sharing a timestamp are neither repeated nor skipped; for
buckets the start of the next bucket. It also pins the resolution the first page was served
from (``r``), so a shorter remaining window does not move the later pages to another store.

Resolution (query_api.resolution): raw readings, or 1-minute / 1-hour rollups, picked from the
window and ``every`` or forced with ``resolution=``; said in the body (``resolution``) and in the
``X-Resolution`` header. A page served from rollups is always downsampled: without ``every`` its
buckets are the rollup's own (``every`` = ``1m`` or ``1h``, ``agg`` mean), and its window is
widened to whole rollup buckets.
"""

from __future__ import annotations

import asyncio
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
from query_api.resolution import (
    RESOLUTION_HEADER,
    RESOLUTIONS,
    WIDTHS,
    Resolution,
    ResolutionError,
    aligned,
    choose,
)
from query_api.rollups import RollupFields, combine
from query_api.settings import ApiSettings
from query_api.timespec import TimeSpecError, Window, format_duration, parse_duration
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.influxql import Aggregate, Rollup
from telemetry_common.schema import TS_MAX, TS_MIN, format_ts

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    responses=problem_responses(401, 403, 422, 502, 503),
)

#: Most rollup rows one page reads (the page's window is cut to fit).
ROLLUP_PAGE_ROWS = 100_000
#: A page of more rollup rows than this is combined in a worker thread.
ROLLUP_OFFLOAD_ROWS = 2_000
_EPOCH_NS_MIN = int((TS_MIN - from_epoch_ns(0)).total_seconds()) * 10**9
_EPOCH_NS_MAX = int((TS_MAX - from_epoch_ns(0)).total_seconds()) * 10**9


def _ns(ts: datetime) -> int:
    delta = ts - from_epoch_ns(0)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _series_key(row: dict[str, Any]) -> str:
    return f"{row.get('gateway_id')}|{row.get('evse_id')}|{row.get('connector_id')}"


def _resume(
    cursors: cursor.Cursors, text: str, query: str, max_span: timedelta
) -> tuple[Window, datetime, set[str], Resolution]:
    """(window of the next page, the original start, series already returned at its start,
    the resolution of the first page).

    The cursor must carry our signature, and its window must be one the first request could
    have asked: from the original start ``o`` to the end ``e`` at most ``max_span``
    (HISTORY_MAX_RANGE, plus the rounding out of a downsampled window), the resume point ``t``
    within it. A resumed query then spans no more than the first request could."""
    try:
        body = cursors.decode(text, "history", query)
        t, first, end, skip = body["t"], body["o"], body["e"], body.get("s", [])
        resolution = body.get("r", "raw")
        ints = all(
            isinstance(v, int) and _EPOCH_NS_MIN <= v <= _EPOCH_NS_MAX for v in (t, first, end)
        )
        if resolution not in RESOLUTIONS:
            raise cursor.CursorError("the cursor is damaged")  # noqa: TRY301
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
        resolution,
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
    resolution: Resolution | None = Field(
        default=None,
        description="force the store: `raw` readings, `1m` or `1h` rollups (default: picked "
        "from the window and every; the answer's `resolution` says which)",
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
    query = cursor.fingerprint("history", charger_id, names, every, agg, q.resolution)
    skip: set[str] = set()
    cursors: cursor.Cursors = state.cursors
    resolution: Resolution
    if cursor_ is not None:
        # A downsampled window is rounded out by less than one bucket at each edge (_aligned),
        # a rollup-served one by less than an hour.
        slack = 2 * max(step or timedelta(0), WIDTHS["1h"])
        win, first, skip, resolution = _resume(
            cursors, cursor_, query, settings.history_max_range + slack
        )
        if resolution != "raw":
            step = step or WIDTHS[resolution]
            agg = agg or "mean"
    else:
        win = window(
            start,
            end,
            now=now,
            default_range=settings.history_default_range,
            max_range=settings.history_max_range,
        )
        try:
            resolution = choose(
                win.start,
                win.end,
                now=now,
                step=step,
                forced=q.resolution,
                rules=settings.retentions,
            )
        except ResolutionError as exc:
            raise ProblemError(422, "invalid-resolution", str(exc)) from exc
        if resolution != "raw":
            width = WIDTHS[resolution]
            step = step or width
            agg = agg or "mean"
            win = Window(*aligned(win.start, win.end, width, from_epoch_ns(0)))
        if step is not None:
            win = _aligned(win, step, start, end)
        first = win.start
    shown_every = every if every is not None or step is None else format_duration(step)
    page = _Page(
        charger_id, names, shown_every, step, agg, limit, query, win, first, skip, cursors,
        resolution,
    )  # fmt: skip
    cache: PageCache = state.history_cache
    known: RollupFields = state.rollup_fields
    mono = state.clock.mono()
    if step is None or cursor_ is not None or not cache.enabled:
        body = await page.render(influx, known, mono)
    else:
        key = (charger_id, tuple(names or ()), names is None, _ns(win.start), _ns(win.end))
        body = await cache.get(
            (*key, every, agg, limit, resolution), mono, lambda: page.render(influx, known, mono)
        )
    return Response(body, media_type="application/json", headers={RESOLUTION_HEADER: resolution})


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
    resolution: Resolution

    async def render(self, influx: InfluxQL, fields: RollupFields, mono: float) -> bytes:
        """The :class:`HistoryPage` document as JSON (built as dicts: a page of models cost
        three times as much)."""
        names, win, limit, skip, step = self.names, self.win, self.limit, self.skip, self.step
        next_cursor: str | None = None
        body: dict[str, Any] = {"o": _ns(self.first), "e": _ns(win.end)}
        if self.resolution != "raw":
            points, t = await self._rollup_page(influx, fields, mono)
            more = t is not None
            if t is not None:
                cur = {**body, "r": self.resolution, "t": t}
                next_cursor = self.cursors.encode("history", self.query, cur)
        else:
            q = influxql.history_query(
                self.charger_id, names, win.start, win.end, limit + len(skip), every=step,
                agg=self.agg,
            )  # fmt: skip
            rows = [row for s in await influx.query(q) for row in s.rows()]
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
        doc.update(resolution=self.resolution, limit=limit, truncated=more)
        if next_cursor is not None:
            doc["next_cursor"] = next_cursor
        doc["points"] = points
        return orjson.dumps(doc)

    async def _rollup_page(
        self, influx: InfluxQL, fields: RollupFields, mono: float
    ) -> tuple[list[dict[str, Any]], int | None]:
        """(the buckets of a rollup-served page, where the next page starts or None).

        A page covers at most ``limit`` buckets of the window and at most ROLLUP_PAGE_ROWS
        rollup rows: its rows are asked of InfluxDB as they are (all connectors), combined here
        (query_api.rollups.combine). Cut by time, a page may hold fewer than ``limit`` buckets
        (empty buckets are left out) and still be followed by another."""
        win, step, agg = self.win, self.step, self.agg
        assert step is not None
        assert agg is not None
        rollup: Rollup = self.resolution  # type: ignore[assignment]
        names = self.names or await fields.get(influx, rollup, mono)
        step_ns = _ns(from_epoch_ns(0) + step)
        per_bucket = max(1, step // WIDTHS[rollup])
        buckets = max(1, min(self.limit, ROLLUP_PAGE_ROWS // per_bucket))
        lo, end = _ns(win.start), _ns(win.end)
        hi = min(end, lo + buckets * step_ns)
        if not names:
            return [], None
        q = influxql.rollup_rows_query(
            self.charger_id, names, from_epoch_ns(lo), from_epoch_ns(hi), ROLLUP_PAGE_ROWS + 1,
            rollup=rollup, agg=agg,
        )  # fmt: skip
        series = await influx.query(q)
        if not series and hi < end:
            # Nothing in this stretch (a charger new this week, asked for a year): the page
            # starts at the charger's next bucket instead of answering empty pages to follow,
            # and with none left it is the last.
            q = influxql.rollup_rows_query(
                self.charger_id, names, from_epoch_ns(hi), from_epoch_ns(end), 1,
                rollup=rollup, agg=agg,
            )  # fmt: skip
            nxt = await influx.query(q)
            if not nxt or not nxt[0].values:
                return [], None
            t0 = int(nxt[0].values[0][0])
            lo = t0 - (t0 - lo) % step_ns
            hi = min(end, lo + buckets * step_ns)
            q = influxql.rollup_rows_query(
                self.charger_id, names, from_epoch_ns(lo), from_epoch_ns(hi), ROLLUP_PAGE_ROWS + 1,
                rollup=rollup, agg=agg,
            )  # fmt: skip
            series = await influx.query(q)
        columns = series[0].columns if series else ["time"]
        rows = [row for s in series for row in s.values]
        if len(series) > 1:  # one series without GROUP BY; merged if ever more
            rows.sort(key=lambda r: r[0])
        if len(rows) > ROLLUP_PAGE_ROWS:  # many connectors: up to the last whole bucket
            cut = int(rows[-1][0])
            cut -= cut % step_ns
            hi = max(cut, lo + step_ns)
            rows = [r for r in rows if int(r[0]) < hi]
        if len(rows) > ROLLUP_OFFLOAD_ROWS:
            # Tens of milliseconds for a year of hours: in a worker thread, the event loop
            # keeps serving cached pages meanwhile (it gets the GIL back every 5 ms).
            points = await asyncio.to_thread(_points, columns, rows, names, agg, step_ns)
        else:
            points = _points(columns, rows, names, agg, step_ns)
        return points, (hi if hi < end else None)


def _points(
    columns: list[str], rows: list[list[Any]], names: list[str], agg: Aggregate, step_ns: int
) -> list[dict[str, Any]]:
    combined = combine(columns, rows, names, agg, step_ns)
    stamps = _bucket_times([t for t, _ in combined])
    return [{"ts": ts, "values": v} for ts, (_, v) in zip(stamps, combined, strict=True)]


def _bucket_times(times: list[int]) -> list[str]:
    """:func:`format_ts` of bucket starts, for pages of thousands of buckets: whole seconds are
    spelled from a day prefix and a time of day, each worked out once (a quarter of the cost)."""
    days: dict[int, str] = {}
    clocks: dict[int, str] = {}
    out = []
    for ns in times:
        seconds, rest = divmod(ns, 10**9)
        if rest or seconds < 0:
            out.append(format_ts(from_epoch_ns(ns)))
            continue
        day, tod = divmod(seconds, 86_400)
        prefix = days.get(day)
        if prefix is None:
            prefix = days[day] = format_ts(from_epoch_ns(day * 86_400 * 10**9))[:11]
        clock = clocks.get(tod)
        if clock is None:
            h, rem = divmod(tod, 3600)
            clock = clocks[tod] = f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}.000Z"
        out.append(prefix + clock)
    return out
