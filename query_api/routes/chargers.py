"""``/v1/chargers``: the charger list and each charger's latest reading (role ``read``)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.auth import require
from query_api.deps import Influx, Mirror, Mono, Now, Settings, influx_of
from query_api.latest.document import latest_body
from query_api.latest.index import ChargerIndex
from query_api.latest.read import get_latest
from query_api.latest.state import ChargerState, charger_state
from query_api.params import ChargerId
from query_api.problems import ProblemError, problem_responses
from query_api.readings import LatestReading
from telemetry_common.ids import ID_PATTERN
from telemetry_common.schema import format_ts

router = APIRouter(
    prefix="/v1/chargers",
    tags=["chargers"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)


class ChargerSummary(BaseModel):
    charger_id: str
    gateway_id: str | None
    last_seen: str = Field(description="ts of the charger's newest reading")
    age_s: float
    state: ChargerState


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


def _live(request: Request) -> bool:
    broker = request.app.state.broker
    return broker is not None and bool(broker.connected)


@router.get("", summary="Chargers with last seen, gateway and state; paginated by id")
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
    after = ""
    if cursor_ is not None:
        try:
            after = str(cursor.decode(cursor_, "chargers", query)["a"])
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
    next_cursor = cursor.encode("chargers", query, {"a": items[-1].charger_id}) if more else None
    return ChargerPage(items=items, next_cursor=next_cursor)


async def latest_of(
    request: Request, charger_id: str, *, influx: Influx, settings: Settings, now: Now, mono: Mono
) -> dict[str, Any]:
    """The charger's latest reading as the API answers it, a LatestReading document (404
    problem if none is stored)."""
    mirror = request.app.state.mirror
    found = await get_latest(
        charger_id, mirror=mirror, influx=influx, live=_live(request), settings=settings, mono=mono
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
)
async def latest(request: Request, charger_id: ChargerId, now: Now, mono: Mono) -> Response:
    # The hot path: few dependencies (each costs FastAPI tens of microseconds), and the document
    # is built as a dict and serialised once with orjson (the response model documents it).
    state = request.app.state
    body = await latest_of(
        request, charger_id, influx=influx_of(request), settings=state.settings, now=now, mono=mono
    )
    return Response(orjson.dumps(body), media_type="application/json")
