"""``/v1/gateways``: the gateway fleet (role ``read``): each gateway's state from its retained
state topic (birth, heartbeat, last will: the live mirror, fed by the API's one broker session),
agent version, outbox backlog and drops, certificate expiry, clock and chargers
(:mod:`query_api.gateways`). ``/v1/gateways/{id}`` adds the charger ids and the gateway's active
alarms; ``/v1/gateways/{id}/gaps`` (:mod:`query_api.routes.pipeline`) its seq gaps.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.alarms.rules import Thresholds
from query_api.alarms.store import read_alarms
from query_api.auth import require
from query_api.deps import Influx, Mirror, Mono, Now, Settings, live
from query_api.gateways import CertStatus, GatewayStateName, GatewayView, fleet
from query_api.latest.index import ChargerIndex
from query_api.problems import ProblemError, problem_responses
from query_api.routes.alarms import AlarmItem
from query_api.settings import ApiSettings
from telemetry_common.ids import ID_PATTERN
from telemetry_common.schema import format_ts

router = APIRouter(
    prefix="/v1/gateways",
    tags=["gateways"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

#: Most gateways one page holds.
MAX_PAGE: Final = 1000
#: Most active alarms ``/v1/gateways/{id}`` lists.
MAX_ALARMS: Final = 100

EXAMPLE: Final[dict[str, Any]] = {
    "gateway_id": "gw-1",
    "state": "online",
    "since": "2026-12-05T08:00:00.000Z",
    "last_seen": "2026-12-06T04:00:00.000Z",
    "age_s": 12.5,
    "agent_version": "0.1.0",
    "heartbeat_interval_s": 60.0,
    "outbox": {
        "depth": 25,
        "oldest_unsent_ts": "2026-12-06T03:59:10.000Z",
        "unconfirmed": 25,
        "drops": {"budget_non_energy": 120},
    },
    "cert_not_after": "2027-03-01T00:00:00.000Z",
    "cert_days_left": 84.8,
    "cert_status": "ok",
    "clock": {"unsynchronised": [], "offset_s": 0.042},
    "chargers": {"count": 2, "href": "v1/chargers?gateway=gw-1"},
}


class Outbox(BaseModel):
    depth: int | None = Field(description="readings in the outbox (sent, unconfirmed included)")
    oldest_unsent_ts: str | None = Field(description="capture time of the oldest; null: empty")
    unconfirmed: int | None = Field(description="sent, not yet acknowledged as stored")
    drops: dict[str, int] | None = Field(
        description="readings dropped without a PUBACK, by reason, since the outbox was made; "
        "null: the agent does not report them (an older agent)"
    )


class Clock(BaseModel):
    unsynchronised: list[str] = Field(description="sources saying the clock is off: os, cloud")
    offset_s: float | None = Field(description="the gateway's clock minus the bridges'")


class Chargers(BaseModel):
    count: int = Field(description="chargers whose newest reading came through this gateway")
    href: str = Field(description="their list, relative to the API's root")


class ChargerIds(Chargers):
    ids: list[str] = Field(description="sorted")


class Gateway(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    gateway_id: str
    state: GatewayStateName = Field(
        description="online, stale (no heartbeat for 3 intervals), offline (last will or clean "
        "stop), unknown (no retained state: known only from stored readings)"
    )
    since: str | None = Field(
        description="when this state began, as far as the API saw (offline: not before last_seen)"
    )
    last_seen: str | None = Field(description="ts of the newest birth or heartbeat")
    age_s: float | None = Field(description="its age on the bridges' clock")
    agent_version: str | None
    heartbeat_interval_s: float | None
    outbox: Outbox | None = Field(description="of the newest heartbeat that carried one")
    cert_not_after: str | None
    cert_days_left: float | None
    cert_status: CertStatus | None = Field(
        description="ok, warning (within ALARM_CERT_DAYS), critical (2 days), expired"
    )
    clock: Clock | None
    chargers: Chargers


class GatewayDetail(Gateway):
    chargers: ChargerIds
    alarms: list[AlarmItem] = Field(description="its active alarms, newest first")


class GatewayPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [EXAMPLE], "next_cursor": None, "live": True}]}
    )

    items: list[Gateway]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` (same filters) for the next page"
    )
    live: bool = Field(description="the broker session is up: states are current")


def _ts(value: datetime | None) -> str | None:
    return format_ts(value) if value is not None else None


def _gateway(view: GatewayView) -> Gateway:
    info = view.info
    outbox = clock = None
    if info is not None and (info.outbox_reported or info.depth is not None):
        outbox = Outbox(
            depth=info.depth,
            oldest_unsent_ts=_ts(info.oldest_unsent),
            unconfirmed=info.unconfirmed,
            drops=info.drops,
        )
    if info is not None and info.clock_unsynchronised is not None:
        clock = Clock(unsynchronised=list(info.clock_unsynchronised), offset_s=info.clock_offset_s)
    gw = view.gateway_id
    return Gateway(
        gateway_id=gw,
        state=view.state,
        since=_ts(info.since) if info else None,
        last_seen=_ts(info.last_online) if info else None,
        age_s=round(view.age_s, 3) if view.age_s is not None else None,
        agent_version=info.agent_version if info else None,
        heartbeat_interval_s=info.interval_s if info else None,
        outbox=outbox,
        cert_not_after=_ts(info.cert_not_after) if info else None,
        cert_days_left=round(view.cert_days_left, 2) if view.cert_days_left is not None else None,
        cert_status=view.cert_status,
        clock=clock,
        chargers=Chargers(count=len(view.charger_ids), href=f"v1/chargers?gateway={gw}"),
    )


async def _fleet(
    request: Request,
    influx: Influx,
    mirror: Mirror,
    settings: ApiSettings,
    now: Now,
    mono: Mono,
    only: str | None = None,
) -> list[GatewayView]:
    """Every gateway (``only``: that one, if known)."""
    index: ChargerIndex = request.app.state.charger_index
    seen = await index.chargers(influx, mirror, mono)
    infos = mirror.gateway_info()
    if only is not None:
        infos = {only: infos[only]} if only in infos else {}
        seen = [c for c in seen if c.gateway_id == only]
    return fleet(
        infos,
        ((c.charger_id, c.gateway_id) for c in seen),
        now,
        warn_days=settings.alarm_cert_days,
        critical_days=Thresholds().cert_critical_days,
    )


@router.get(
    "",
    summary="Gateways with state, agent version, backlog, drops, certificate expiry, chargers",
)
async def list_gateways(
    request: Request,
    influx: Influx,
    mirror: Mirror,
    settings: Settings,
    now: Now,
    mono: Mono,
    state: Annotated[
        GatewayStateName | None, Query(description="only gateways in this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="gateways per page")] = 100,
    cursor_: Annotated[
        str | None, Query(alias="cursor", description="next_cursor of the previous page")
    ] = None,
) -> GatewayPage:
    """Sorted by gateway id; every gateway with a retained state, and every gateway a stored
    reading names (``unknown`` without a retained state)."""
    query = cursor.fingerprint("gateways", state)
    cursors: cursor.Cursors = request.app.state.cursors
    after = ""
    if cursor_ is not None:
        try:
            after = str(cursors.decode(cursor_, "gateways", query)["a"])
        except (cursor.CursorError, KeyError) as exc:
            raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    items: list[Gateway] = []
    more = False
    for view in await _fleet(request, influx, mirror, settings, now, mono):
        if view.gateway_id <= after or (state is not None and view.state != state):
            continue
        if len(items) == limit:
            more = True
            break
        items.append(_gateway(view))
    next_cursor = cursors.encode("gateways", query, {"a": items[-1].gateway_id}) if more else None
    return GatewayPage(items=items, next_cursor=next_cursor, live=live(request))


@router.get(
    "/{gateway_id}",
    summary="One gateway: state, health, its charger ids and active alarms",
    responses=problem_responses(404),
)
async def gateway_detail(
    request: Request,
    influx: Influx,
    mirror: Mirror,
    settings: Settings,
    now: Now,
    mono: Mono,
    gateway_id: Annotated[str, Path(pattern=ID_PATTERN, examples=["gw-1"])],
) -> GatewayDetail:
    found = await _fleet(request, influx, mirror, settings, now, mono, only=gateway_id)
    if not found:
        raise ProblemError(404, "not-found", f"nothing known of gateway {gateway_id!r}")
    alarms = await read_alarms(
        influx,
        now - settings.alarm_lookback,
        now + timedelta(seconds=1),
        MAX_ALARMS,
        active_only=True,
        subject=gateway_id,
    )
    (view,) = found
    base = _gateway(view)
    return GatewayDetail(
        **base.model_dump(exclude={"chargers"}),
        chargers=ChargerIds(**base.chargers.model_dump(), ids=view.charger_ids),
        alarms=[AlarmItem.model_validate(a.item()) for a in alarms],
    )
