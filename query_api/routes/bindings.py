"""``/v1/bindings``: which gateway may send readings for a charger (docs/bridge.md).

The bindings store is InfluxDB measurement ``bindings`` in retention policy ``keep`` (duration
INF): one point per change, tag ``charger_id``, fields ``gateway_id`` (``""`` = unbound),
``previous`` and ``changed_by``; a charger's binding is its newest point. The bridges load it at
start and read its changes every ``TELEMETRY_BRIDGE_BINDINGS_REFRESH_S``, so a ``PUT`` or
``DELETE`` here takes effect on every bridge within that period, without a restart.

Reading needs the ``read`` role, changing needs ``admin``. With ``TELEMETRY_API_BINDINGS``
``first-come`` (as the bridges' dev option), the bindings learned from the readings (each
charger's newest reading's gateway, as the bridges' warm-up) are listed too, where the store
does not name the charger. With ``TELEMETRY_API_BINDINGS_FILE`` (the bridges' ``BINDINGS_FILE``,
mounted into the API too) the file's bindings are listed where the store does not name the
charger, with the bridges' precedence: store, then file, then learned.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.auth import Principal, require
from query_api.deps import Influx, Settings
from query_api.params import ChargerId
from query_api.problems import ProblemError, problem_responses
from query_api.settings import ApiSettings
from telemetry_common.bindings import no_store_yet, store_changes
from telemetry_common.ids import ID_PATTERN, Id
from telemetry_common.influx_query import InfluxError, InfluxQL, Series
from telemetry_common.influx_write import InfluxWriter, WriteError, create_retention_policy
from telemetry_common.influxql import bindings_query
from telemetry_common.newest_state import newest_chargers
from telemetry_common.schema import format_ts
from telemetry_common.storage import BINDINGS_MEASUREMENT, KEEP_RP

#: Most bindings one page holds.
MAX_PAGE = 1000

router = APIRouter(
    prefix="/v1/bindings", tags=["bindings"], responses=problem_responses(401, 403, 422, 503)
)

Source = Literal["store", "file", "learned"]


class Binding(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "charger_id": "CP-0042",
                    "gateway_id": "gw-001",
                    "source": "store",
                    "changed_at": "2026-05-01T12:00:00.000Z",
                    "changed_by": "api:admin",
                    "previous": "gw-000",
                }
            ]
        }
    )

    charger_id: str
    gateway_id: str
    source: Source = Field(
        description="`store`: set through this API; `file`: the bindings file "
        "(TELEMETRY_API_BINDINGS_FILE, the bridges' file); `learned`: first-come, from the "
        "readings"
    )
    changed_at: str | None = Field(default=None, description="when the store's change was made")
    changed_by: str | None = None
    previous: str | None = Field(default=None, description="the gateway bound before the change")


class BindingPage(BaseModel):
    items: list[Binding]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` (same filters) for the next page"
    )


class BindingChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"gateway_id": "gw-1"}]}
    )

    gateway_id: Id = Field(description=f"the gateway the charger is bound to, {ID_PATTERN}")


def _ts(ns: int | None) -> str | None:
    return format_ts(datetime.fromtimestamp(ns / 1e9, UTC)) if ns is not None else None


def _stored(series: list[Series]) -> dict[str, Binding | None]:
    """Each charger the store names: its binding, or None when its newest change unbound it."""
    return {
        c: Binding(
            charger_id=c,
            gateway_id=change.gateway_id,
            source="store",
            changed_at=_ts(change.ns),
            changed_by=change.changed_by,
            previous=change.previous,
        )
        if change.gateway_id
        else None
        for c, change in store_changes(series).items()
    }


async def _store(influx: InfluxQL, charger_id: str | None = None) -> dict[str, Binding | None]:
    try:
        return _stored(await influx.query(bindings_query(charger_id=charger_id)))
    except InfluxError as exc:
        if no_store_yet(exc):
            return {}  # nothing was ever bound
        raise


async def _learned(influx: InfluxQL) -> dict[str, Binding]:
    """First-come: each charger's gateway of its newest stored reading (as the bridges warm)."""
    return {
        c: Binding(charger_id=c, gateway_id=mark.gateway_id, source="learned")
        for c, mark in (await newest_chargers(influx)).items()
    }


async def current(
    influx: InfluxQL,
    settings: ApiSettings,
    charger_id: str | None = None,
    *,
    file: dict[str, str] | None = None,
) -> dict[str, Binding]:
    """The bindings as the bridges see them: the store's, then the file's (``file``: its pairs)
    and in first-come mode the learned ones, each where the ones before name no charger."""
    stored = await _store(influx, charger_id)
    found: dict[str, Binding] = {}
    if settings.bindings == "first-come":
        learned = await _learned(influx)
        if charger_id is not None:
            learned = {charger_id: learned[charger_id]} if charger_id in learned else {}
        found.update((c, b) for c, b in learned.items() if c not in stored)
    pairs = file or {}
    if charger_id is not None:
        pairs = {charger_id: pairs[charger_id]} if charger_id in pairs else {}
    found.update(
        (c, Binding(charger_id=c, gateway_id=gw, source="file"))
        for c, gw in pairs.items()
        if c not in stored
    )
    found.update((c, b) for c, b in stored.items() if b is not None)
    return found


@router.get(
    "",
    summary="Charger bindings, by charger id; paginated",
    dependencies=[Depends(require("read"))],
)
async def list_bindings(
    request: Request,
    influx: Influx,
    settings: Settings,
    gateway_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="only the chargers of this gateway")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="bindings per page")] = 100,
    cursor_: Annotated[
        str | None, Query(alias="cursor", description="next_cursor of the previous page")
    ] = None,
) -> BindingPage:
    query = cursor.fingerprint("bindings", gateway_id)
    cursors: cursor.Cursors = request.app.state.cursors
    after = ""
    if cursor_ is not None:
        try:
            after = str(cursors.decode(cursor_, "bindings", query)["a"])
        except (cursor.CursorError, KeyError) as exc:
            raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    every = await current(influx, settings, file=request.app.state.file_bindings)
    chosen = sorted(
        c
        for c, b in every.items()
        if c > after and (gateway_id is None or b.gateway_id == gateway_id)
    )
    items = [every[c] for c in chosen[:limit]]
    more = len(chosen) > limit
    next_cursor = cursors.encode("bindings", query, {"a": items[-1].charger_id}) if more else None
    return BindingPage(items=items, next_cursor=next_cursor)


@router.get(
    "/{charger_id}",
    summary="The gateway a charger is bound to",
    dependencies=[Depends(require("read"))],
    responses=problem_responses(404),
)
async def get_binding(
    request: Request, charger_id: ChargerId, influx: Influx, settings: Settings
) -> Binding:
    file = request.app.state.file_bindings
    found = (await current(influx, settings, charger_id, file=file)).get(charger_id)
    if found is None:
        raise ProblemError(
            404,
            "not-found",
            f"charger {charger_id!r} is not bound in the bindings store"
            + ("" if settings.bindings_file else " (a bridge's BINDINGS_FILE may bind it)"),
        )
    return found


def _line(charger_id: str, gateway_id: str, previous: str, changed_by: str) -> str:
    """The store's point of one change (every value an allow-listed id or our own text: nothing
    to escape)."""
    fields = f'gateway_id="{gateway_id}",previous="{previous}",changed_by="{changed_by}"'
    return f"{BINDINGS_MEASUREMENT},charger_id={charger_id} {fields} {time.time_ns()}"


async def _change(request: Request, charger_id: str, gateway_id: str, who: Principal) -> str:
    """Write one change; the gateway the charger was bound to before (``""``: none)."""
    state = request.app.state
    settings: ApiSettings = state.settings
    writer: InfluxWriter | None = state.writer
    if writer is None:
        raise RuntimeError("no InfluxDB writer: run the app with its lifespan")
    before = (await _store(state.influx, charger_id)).get(charger_id)
    previous = before.gateway_id if before is not None else ""
    if not state.keep_rp_ready:  # the start's attempt did not succeed: once more
        created = await create_retention_policy(settings.influx, KEEP_RP, attempts=1)
        state.keep_rp_ready = created or settings.influx.api != "v1"
    try:
        await writer.write([_line(charger_id, gateway_id, previous, f"api:{who.role}")], rp=KEEP_RP)
    except WriteError as exc:
        state.keep_rp_ready = False
        raise ProblemError(503, "store-unavailable", f"the binding was not stored: {exc}") from exc
    return previous


@router.put(
    "/{charger_id}",
    summary="Bind a charger to a gateway, or move it to another (admin)",
    responses=problem_responses(503),
)
async def put_binding(
    request: Request,
    charger_id: ChargerId,
    change: BindingChange,
    who: Annotated[Principal, Depends(require("admin"))],
) -> Binding:
    previous = await _change(request, charger_id, change.gateway_id, who)
    return Binding(
        charger_id=charger_id,
        gateway_id=change.gateway_id,
        source="store",
        changed_at=format_ts(datetime.now(UTC)),
        changed_by=f"api:{who.role}",
        previous=previous or None,
    )


@router.delete(
    "/{charger_id}",
    summary="Unbind a charger (admin): its readings are refused until it is bound again",
    status_code=204,
    responses=problem_responses(503),
)
async def delete_binding(
    request: Request,
    charger_id: ChargerId,
    who: Annotated[Principal, Depends(require("admin"))],
) -> Response:
    await _change(request, charger_id, "", who)
    return Response(status_code=204)
