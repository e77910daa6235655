"""Charging sessions (role ``read``): a charger's sessions, the fleet-wide export (JSON pages or
CSV streamed whole) and one session with its power curve. Read from ``keep.sessions``, which
the sessions job writes (docs/design.md#sessions); the read path is :mod:`query_api.sessions`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Final, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from query_api import cursor
from query_api.auth import require
from query_api.deps import Influx, Mono, Now, Settings
from query_api.pagecache import PageCache
from query_api.params import END_DOC, START_DOC, ChargerId, window
from query_api.problems import ProblemError, problem_responses
from query_api.readings import from_epoch_ns
from query_api.sessions import (
    ChargerSessions,
    Export,
    Position,
    SessionDetail,
    SessionPage,
    csv_chunks,
    power_curve,
    read_page,
    sessions_of,
)
from query_api.settings import ApiSettings
from query_api.timespec import format_duration
from telemetry_common import influxql
from telemetry_common.ids import ID_PATTERN
from telemetry_common.influxql import SessionState
from telemetry_common.schema import format_ts

router = APIRouter(
    prefix="/v1",
    tags=["sessions"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

#: The window when ``start`` is not given.
DEFAULT_RANGE: Final = timedelta(days=30)
DEFAULT_LIMIT: Final = 1000
DEFAULT_POINTS: Final = 200
MAX_POINTS: Final = 2000
CSV_MEDIA_TYPE: Final = "text/csv; charset=utf-8"

StartParam = Annotated[str | None, Query(description=START_DOC + "; default 30 days back")]
EndParam = Annotated[str | None, Query(description=END_DOC)]
StateParam = Annotated[SessionState | None, Query(description="only active or only ended ones")]
LimitParam = Annotated[
    int | None,
    Query(ge=1, description="sessions per page (default 1,000; at most SESSIONS_MAX_PAGE)"),
]


def _checked_limit(limit: int | None, settings: ApiSettings) -> int:
    if limit is None:
        return min(DEFAULT_LIMIT, settings.sessions_max_page)
    if limit > settings.sessions_max_page:
        raise ProblemError(
            422, "limit-too-large", f"limit={limit} exceeds the maximum of "
            f"{settings.sessions_max_page} sessions per page",
        )  # fmt: skip
    return limit


@router.get(
    "/chargers/{charger_id}/sessions",
    summary="A charger's sessions that started in a window, newest first",
    response_model=ChargerSessions,
)
async def charger_sessions(
    request: Request,
    charger_id: ChargerId,
    influx: Influx,
    settings: Settings,
    now: Now,
    mono: Mono,
    start: StartParam = None,
    end: EndParam = None,
    state: StateParam = None,
    limit: LimitParam = None,
) -> Response:
    limit = _checked_limit(limit, settings)
    win = window(
        start, end, now=now, default_range=DEFAULT_RANGE, max_range=settings.sessions_max_range
    )

    async def build() -> bytes:
        q = influxql.sessions_query(
            win.start, win.end, limit=limit + 1, charger_id=charger_id, state=state,
            newest_first=True,
        )  # fmt: skip
        items = sessions_of(await influx.query(q))
        body = {
            "charger_id": charger_id,
            "start": format_ts(win.start),
            "end": format_ts(win.end),
            "items": items[:limit],
            "truncated": len(items) > limit,
        }
        return orjson.dumps(body)

    # A page asked again within SESSIONS_CACHE_S (as given: "-30d" is one key) is reused: the
    # sessions job rewrites sessions every INTERVAL_S (30 s) anyway.
    cache: PageCache = request.app.state.sessions_cache
    if not cache.enabled:
        return Response(await build(), media_type="application/json")
    key = ("charger-sessions", charger_id, start, end, state, limit)
    return Response(await cache.get(key, mono, build), media_type="application/json")


async def _then(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for chunk in rest:
        yield chunk


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/csv" in types and "application/json" not in types


@router.get(
    "/sessions",
    summary="Fleet-wide session export, oldest first: JSON pages or CSV streamed whole",
    response_model=SessionPage,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def export_sessions(
    request: Request,
    influx: Influx,
    settings: Settings,
    now: Now,
    start: StartParam = None,
    end: EndParam = None,
    state: StateParam = None,
    gateway_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="only this gateway's sessions")
    ] = None,
    format_: Annotated[
        Literal["json", "csv"] | None,
        Query(
            alias="format",
            description="json (pages) or csv (the whole window); default from Accept",
        ),
    ] = None,
    limit: LimitParam = None,
    cursor_: Annotated[
        str | None, Query(alias="cursor", description="next_cursor of the previous page")
    ] = None,
) -> Response:
    limit = _checked_limit(limit, settings)
    export = Export(state=state, gateway_id=gateway_id)
    query = export.fingerprint()
    cursors: cursor.Cursors = request.app.state.cursors
    if cursor_ is not None:
        try:
            at = Position.decode(cursors, cursor_, query, settings.sessions_max_range)
        except cursor.CursorError as exc:
            raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    else:
        win = window(
            start, end, now=now, default_range=DEFAULT_RANGE, max_range=settings.sessions_max_range
        )
        at = Position.first(win)
    if _wants_csv(request, format_):
        # The first chunk is read before the answer starts: its errors are still problems.
        chunks = csv_chunks(influx, export, at)
        first = await anext(chunks)
        return StreamingResponse(
            _then(first, chunks),
            media_type=CSV_MEDIA_TYPE,
            headers={
                "Content-Disposition": 'attachment; filename="sessions.csv"',
                "Vary": "Accept",
            },
        )
    items, nxt = await read_page(influx, export, at, limit)
    body = {
        "start": format_ts(from_epoch_ns(at.start_ns)),
        "end": format_ts(from_epoch_ns(at.end_ns)),
        "items": items,
        "next_cursor": nxt.encode(cursors, query) if nxt is not None else None,
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"Vary": "Accept"})


@router.get(
    "/sessions/{transaction_id}",
    summary="One session and its power curve",
    response_model=SessionDetail,
    responses=problem_responses(404),
)
async def get_session(
    transaction_id: Annotated[
        str, Path(pattern=ID_PATTERN, description="the session's transaction id")
    ],
    influx: Influx,
    settings: Settings,
    now: Now,
    charger_id: Annotated[
        str, Query(pattern=ID_PATTERN, description="the charger (transaction ids are per charger)")
    ],
    points: Annotated[
        int, Query(ge=1, le=MAX_POINTS, description="most buckets of the power curve")
    ] = DEFAULT_POINTS,
) -> Response:
    found = sessions_of(await influx.query(influxql.session_query(charger_id, transaction_id)))
    if not found:
        raise ProblemError(
            404, "not-found", f"no session {transaction_id!r} of charger {charger_id!r}"
        )
    session = max(found, key=lambda s: s["started_at"])
    resolution, step, curve = await power_curve(
        influx, session, points=points, now=now, rules=settings.retentions
    )
    body = {**session, "resolution": resolution, "every": format_duration(step), "power": curve}
    return Response(orjson.dumps(body), media_type="application/json")
