"""``/v1/chargers``: the charger list and each charger's latest reading (role ``read``)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.auth import HEADER, SECURITY, authorize, require
from query_api.connectors import Connector, connectors_of
from query_api.deps import Influx, Mirror, Mono, Now, Settings, live, stored_latest_of
from query_api.latest.document import latest_body
from query_api.latest.index import ChargerIndex
from query_api.latest.mirror import LiveMirror
from query_api.latest.read import get_latest
from query_api.latest.state import ChargerState, charger_state
from query_api.params import ChargerId, UncheckedChargerId, checked_id
from query_api.problems import ProblemError, problem_responses
from query_api.readings import LatestReading
from query_api.registry import IDENTITY, identities, unknown
from query_api.settings import ApiSettings
from telemetry_common.ids import ID_PATTERN
from telemetry_common.schema import format_ts

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    responses=problem_responses(401, 403, 422, 502, 503),
)


class ChargerSummary(BaseModel):
    charger_id: str
    gateway_id: str | None
    last_seen: str = Field(description="ts of the charger's newest reading")
    age_s: float
    state: ChargerState
    vendor: str | None = Field(default=None, description="from the charger registry")
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None


class ChargerDetail(BaseModel):
    """A charger: its newest reading's age and state, its identity, its connectors."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "charger_id": "gw-1-cp001",
                    "gateway_id": "gw-1",
                    "last_seen": "2026-05-01T12:00:00.000Z",
                    "age_s": 4.2,
                    "state": "online",
                    "vendor": "ACME",
                    "model": "Wallbox 22",
                    "serial": "SN-0001",
                    "firmware": "1.4.2",
                    "connectors": [
                        {
                            "evse_id": 1,
                            "connector_id": 1,
                            "status": "Charging",
                            "status_at": "2026-05-01T11:02:00.000Z",
                            "power_w": 11040.0,
                            "energy_wh": 27345.0,
                            "last_seen": "2026-05-01T12:00:00.000Z",
                            "session": {
                                "transaction_id": "1234",
                                "started_at": "2026-05-01T11:02:00.000Z",
                                "duration_s": 3484.2,
                                "energy_wh": 10000.0,
                                "meter_start_wh": 17345.0,
                            },
                        }
                    ],
                }
            ]
        }
    )

    charger_id: str
    gateway_id: str | None
    last_seen: str | None = Field(description="ts of the newest reading; null if none")
    age_s: float | None
    state: ChargerState
    vendor: str | None
    model: str | None
    serial: str | None
    firmware: str | None
    connectors: list[Connector] = Field(
        description="each connector with a reading within CONNECTORS_WINDOW"
    )


class ChargerPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "charger_id": "gw-1-cp001",
                            "gateway_id": "gw-1",
                            "last_seen": "2026-05-01T12:00:00.000Z",
                            "age_s": 4.2,
                            "state": "online",
                            "vendor": "ACME",
                            "model": "Wallbox 22",
                            "serial": "SN-0001",
                            "firmware": "1.4.2",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    items: list[ChargerSummary]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` (same filters) for the next page"
    )


@router.get(
    "",
    summary="Chargers with last seen, gateway and state; paginated by id",
    dependencies=[Depends(require("read"))],
)
async def list_chargers(
    request: Request,
    influx: Influx,
    mirror: Mirror,
    settings: Settings,
    now: Now,
    mono: Mono,
    gateway: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="only this gateway's chargers")
    ] = None,
    state: Annotated[ChargerState | None, Query(description="only chargers in this state")] = None,
    limit: Annotated[int, Query(ge=1, description="chargers per page (capped)")] = 100,
    cursor_: Annotated[
        str | None, Query(alias="cursor", description="next_cursor of the previous page")
    ] = None,
) -> ChargerPage:
    if limit > settings.chargers_max_page:
        raise ProblemError(
            422, "limit-too-large", f"limit={limit} exceeds the maximum of "
            f"{settings.chargers_max_page} chargers per page",
        )  # fmt: skip
    query = cursor.fingerprint("chargers", gateway, state)
    cursors: cursor.Cursors = request.app.state.cursors
    after = ""
    if cursor_ is not None:
        try:
            after = str(cursors.decode(cursor_, "chargers", query)["a"])
        except (cursor.CursorError, KeyError) as exc:
            raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    index: ChargerIndex = request.app.state.charger_index
    items: list[ChargerSummary] = []
    more = False
    for seen in await index.chargers(influx, mirror, mono):
        if seen.charger_id <= after or (gateway is not None and seen.gateway_id != gateway):
            continue
        age_s = round((now - seen.last_seen).total_seconds(), 3)
        st = charger_state(
            age_s,
            mirror.gateway_state(seen.gateway_id),
            stale_after_s=settings.state_stale_after_s,
            offline_after_s=settings.state_offline_after_s,
        )
        if state is not None and st != state:
            continue
        if len(items) == limit:
            more = True
            break
        items.append(
            ChargerSummary(
                charger_id=seen.charger_id,
                gateway_id=seen.gateway_id,
                last_seen=format_ts(seen.last_seen),
                age_s=age_s,
                state=st,
            )
        )
    known = await identities(influx, [c.charger_id for c in items])
    for item in items:
        ident = known.get(item.charger_id)
        if ident is not None:
            for key in IDENTITY:
                setattr(item, key, ident[key])
    next_cursor = cursors.encode("chargers", query, {"a": items[-1].charger_id}) if more else None
    return ChargerPage(items=items, next_cursor=next_cursor)


@router.get(
    "/{charger_id}",
    summary="One charger: state, identity and each connector's status and active session",
    response_model=ChargerDetail,
    responses=problem_responses(404),
    dependencies=[Depends(require("read"))],
)
async def charger_detail(
    request: Request,
    charger_id: ChargerId,
    influx: Influx,
    mirror: Mirror,
    settings: Settings,
    now: Now,
    mono: Mono,
) -> Response:
    found, known, connectors = await asyncio.gather(
        get_latest(
            charger_id, mirror=mirror, stored=stored_latest_of(request), live=live(request),
            settings=settings, mono=mono,
        ),
        identities(influx, [charger_id]),
        connectors_of(
            influx, charger_id, now=now, window=settings.connectors_window,
            sessions_range=settings.sessions_max_range,
        ),
    )  # fmt: skip
    ident = known.get(charger_id)
    if found is None and ident is None:
        raise ProblemError(404, "not-found", f"nothing known of charger {charger_id!r}")
    ident = ident or unknown()
    body: dict[str, Any] = {"charger_id": charger_id, "gateway_id": ident["gateway_id"]}
    if found is not None:
        latest = latest_body(
            found[0], found[1], now=now, gateway_state=mirror.gateway_state(found[0].gateway_id),
            settings=settings,
        )  # fmt: skip
        body.update(
            gateway_id=latest["gateway_id"] or ident["gateway_id"],
            last_seen=latest["ts"],
            age_s=latest["age_s"],
            state=latest["state"],
        )
    else:
        body.update(last_seen=None, age_s=None, state="offline")
    body.update((key, ident[key]) for key in IDENTITY)
    body["connectors"] = connectors
    return Response(orjson.dumps(body), media_type="application/json")


async def latest_of(
    request: Request, charger_id: str, *, now: datetime, mono: float
) -> dict[str, Any]:
    """The charger's latest reading as the API answers it, a LatestReading document (404
    problem if none is stored)."""
    state = request.app.state
    mirror: LiveMirror = state.mirror
    settings: ApiSettings = state.settings
    found = await get_latest(
        charger_id,
        mirror=mirror,
        stored=stored_latest_of(request),
        live=live(request),
        settings=settings,
        mono=mono,
    )
    if found is None:
        raise ProblemError(404, "not-found", f"no reading stored for charger {charger_id!r}")
    snapshot, source = found
    return latest_body(
        snapshot,
        source,
        now=now,
        gateway_state=mirror.gateway_state(snapshot.gateway_id),
        settings=settings,
    )


@router.get(
    "/{charger_id}/latest",
    summary="The charger's newest reading, its age and state",
    response_model=LatestReading,
    responses=problem_responses(404),
    openapi_extra={"security": SECURITY},
)
async def latest(request: Request, charger_id: UncheckedChargerId) -> Response:
    # A hot route (query_api.lean): the key, then the id are checked here, by the functions
    # every route uses; the document is built as a dict and serialised once (the response model
    # documents it). A comment, not a docstring: FastAPI would publish it in the OpenAPI.
    state = request.app.state
    clock = state.clock
    authorize(state, request.headers.get(HEADER), "read")
    charger_id = checked_id(charger_id)
    body = await latest_of(request, charger_id, now=clock.now(), mono=clock.mono())
    return Response(orjson.dumps(body), media_type="application/json")
