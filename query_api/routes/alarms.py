"""``/v1/alarms``: active alarms and their history, from InfluxDB (role ``read``).

Read from measurement ``alarms`` (docs/alarms.md), so every replica answers the same whether or
not it evaluates the alarms itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final, Literal, get_args

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from query_api.alarms.store import read_alarms
from query_api.auth import require
from query_api.deps import Influx, Now, Settings
from query_api.params import End, Start, window
from query_api.problems import problem_responses
from telemetry_common.schema import format_ts
from telemetry_common.topics import ALARM_KINDS

router = APIRouter(
    prefix="/v1",
    tags=["alarms"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

#: Most items one answer holds.
MAX_ITEMS: Final = 1000
#: The window of ``state=all`` when none is given.
DEFAULT_ALL_RANGE: Final = timedelta(days=7)

Kind = Literal[
    "charger_silent",
    "connector_faulted",
    "gateway_offline",
    "seq_gap_confirmed",
    "deadletters",
    "edge_backlog",
    "certificate_expiry",
    "gateway_clock",
]
if set(get_args(Kind)) != set(ALARM_KINDS):  # one list of kinds: telemetry_common.topics
    raise AssertionError("Kind differs from telemetry_common.topics.ALARM_KINDS")


class AlarmItem(BaseModel):
    id: str = Field(description="stable per occurrence")
    kind: Kind
    subject: str = Field(description="gateway, charger or `{charger}.{evse}.{connector}`")
    since: str = Field(description="when it was raised")
    cleared_at: str | None = Field(description="when it was cleared; null while active")
    severity: str
    detail: str


class Alarms(BaseModel):
    state: Literal["active", "all"]
    start: str
    end: str
    items: list[AlarmItem] = Field(description="newest first")
    truncated: bool = Field(description="more occurrences match than `limit`")


@router.get("/alarms", summary="active alarms, or every alarm raised in a window")
async def alarms(
    influx: Influx,
    settings: Settings,
    now: Now,
    state: Literal["active", "all"] = "active",
    kind: Kind | None = None,
    subject: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,80}$", description="one subject")
    ] = None,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 100,
) -> Alarms:
    """``state=active`` (default): the alarms active now, raised within ALARM_LOOKBACK (or
    ``[start, end)``). ``state=all``: every occurrence raised in ``[start, end)`` (default the
    last 7 days), with ``cleared_at`` once cleared."""
    longest = settings.alarm_lookback
    default = longest if state == "active" else min(longest, DEFAULT_ALL_RANGE)
    win = window(start, end, now=now, default_range=default, max_range=settings.alarm_lookback)
    found = await read_alarms(
        influx,
        win.start,
        win.end,
        limit + 1,
        active_only=state == "active",
        kind=kind,
        subject=subject,
    )
    return Alarms(
        state=state,
        start=format_ts(win.start),
        end=format_ts(win.end),
        items=[AlarmItem.model_validate(a.item()) for a in found[:limit]],
        truncated=len(found) > limit,
    )
