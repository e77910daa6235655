"""``/v1/fleet/daily``: readings per status on one UTC day, as JSON or an HTML table (``read``).

Content negotiation: ``format=html`` or ``format=json`` decides; otherwise HTML when the
``Accept`` header prefers ``text/html`` to ``application/json`` (a browser), JSON otherwise.
Every value in the HTML is escaped.
"""

from __future__ import annotations

import asyncio
import html
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from query_api.auth import require
from query_api.deps import Influx, Now
from query_api.problems import ProblemError, problem_responses
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.schema import TS_MAX, TS_MIN, Status

router = APIRouter(
    prefix="/v1/fleet",
    tags=["fleet"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

STATUSES: tuple[str, ...] = get_args(Status)


class FleetDaily(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "date": "2026-05-01",
                    "total": 2880,
                    "by_status": {"Available": 1200, "Charging": 1600, "Finishing": 80},
                    "no_status": 0,
                }
            ]
        }
    )

    date: str
    total: int
    by_status: dict[str, int]
    no_status: int


def _q(accept: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out[media.strip().lower()] = q
    return out


def wants_html(accept: str | None) -> bool:
    """True when ``accept`` prefers text/html to application/json (pure)."""
    if not accept:
        return False
    q = _q(accept)
    html_q = q.get("text/html", 0.0)
    json_q = q.get("application/json", q.get("*/*", 0.0) if "text/html" not in q else 0.0)
    return html_q > 0 and html_q > json_q


def render_html(daily: FleetDaily) -> str:
    """The day as a small HTML page with one table (every value escaped)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(status)}</td><td>{count}</td></tr>"
        for status, count in daily.by_status.items()
    )
    if daily.no_status:
        rows += f"<tr><td><em>no status</em></td><td>{daily.no_status}</td></tr>"
    title = f"Readings per status on {e(daily.date)}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head><body><h1>{title}</h1>"
        "<table><thead><tr><th>status</th><th>readings</th></tr></thead>"
        f"<tbody>{rows}</tbody><tfoot><tr><th>total</th><th>{daily.total}</th></tr></tfoot>"
        "</table></body></html>"
    )


async def count_day(influx: InfluxQL, day: date) -> FleetDaily:
    start = datetime.combine(day, time(), UTC)
    end = start + timedelta(days=1)

    async def count(status: str | None) -> int:
        series = await influx.query(influxql.count_readings_query(start, end, status))
        values = [row.get("count") for s in series for row in s.rows()]
        return int(values[0]) if values and isinstance(values[0], int | float) else 0

    counts = await asyncio.gather(count(None), *(count(s) for s in STATUSES))
    total, per = counts[0], dict(zip(STATUSES, counts[1:], strict=True))
    by_status = {s: n for s, n in per.items() if n}
    return FleetDaily(
        date=day.isoformat(),
        total=total,
        by_status=by_status,
        no_status=max(0, total - sum(by_status.values())),
    )


@router.get(
    "/daily",
    summary="Readings per status on one UTC day (JSON, or an HTML table for browsers)",
    response_model=FleetDaily,
    responses={200: {"content": {"text/html": {"example": "<table>...</table>"}}}},
)
async def daily(
    influx: Influx,
    now: Now,
    date_: Annotated[
        str | None,
        Query(
            alias="date",
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description="YYYY-MM-DD (UTC); default today",
            examples=["2026-05-01"],
        ),
    ] = None,
    format_: Annotated[
        Literal["json", "html"] | None, Query(alias="format", description="overrides Accept")
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> JSONResponse | HTMLResponse:
    day = now.date()
    if date_ is not None:
        try:
            day = date.fromisoformat(date_)
        except ValueError as exc:
            raise ProblemError(422, "invalid-date", f"date={date_!r}: not a calendar date") from exc
    if not TS_MIN.date() < day < TS_MAX.date():
        raise ProblemError(422, "invalid-date", f"date={date_!r}: outside what InfluxDB stores")
    result = await count_day(influx, day)
    as_html = format_ == "html" or (format_ is None and wants_html(accept))
    headers = {"Vary": "Accept"}
    if as_html:
        return HTMLResponse(render_html(result), headers=headers)
    return JSONResponse(result.model_dump(), headers=headers)
