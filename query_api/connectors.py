"""A charger's connectors as ``GET /v1/chargers/{id}`` shows them: per connector its newest
reading (status, power, energy register), and its active session with the energy so far.

Per connector seen within ``CONNECTORS_WINDOW``:

- ``status``/``status_at``: its newest reading that carried a status; ``power_w``, ``energy_wh``
  and ``last_seen``: its newest reading (null where that reading carried none);
- ``session``: when the newest reading belongs to a transaction (and is not its ``ended``
  reading), that session: from ``keep.sessions`` (state ``active``) its ``started_at`` and
  ``meter_start_wh``, with ``energy_wh`` = the newest ``energy_wh`` - ``meter_start_wh`` (the
  stored value so far when the newest reading has no register) and ``duration_s`` = now -
  ``started_at``. A transaction the sessions job has not computed yet is
  ``{transaction_id, started_at: null, ...: null}``. When the newest reading carries no
  transaction but a status of a connector inside one (``Charging``, ``SuspendedEV``,
  ``SuspendedEVSE``: OCPP's StatusNotification carries no transactionId), the connector's
  stored active session. Otherwise null: a newer reading without the transaction ends it
  (docs/design.md#sessions, ``end_cause`` ``next``).

Three queries, run together: newest reading per connector, newest status per connector, the
charger's active sessions (started within ``SESSIONS_MAX_RANGE``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, Field

from query_api.readings import from_epoch_ns, tag_int
from query_api.sessions import sessions_of
from telemetry_common import influxql
from telemetry_common.energy import register_difference
from telemetry_common.influx_query import InfluxQL, Series
from telemetry_common.schema import IN_TRANSACTION, format_ts

#: Active sessions are looked for up to this far ahead of now (readings may be stamped ahead
#: of the API's clock, by at most the bridge's MAX_FUTURE_S).
_AHEAD: Final = timedelta(hours=1)
_ACTIVE_LIMIT: Final = 1000


class ActiveSession(BaseModel):
    transaction_id: str
    started_at: str | None = Field(description="null until the sessions job computed it")
    duration_s: float | None = Field(description="from started_at to now")
    energy_wh: float | None = Field(description="energy so far: newest energy_wh - meter_start_wh")
    meter_start_wh: float | None


class Connector(BaseModel):
    evse_id: int
    connector_id: int
    status: str | None
    status_at: str | None = Field(description="ts of the newest reading that carried a status")
    power_w: float | None
    energy_wh: float | None
    last_seen: str = Field(description="ts of the connector's newest reading")
    session: ActiveSession | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _by_connector(series: list[Series]) -> dict[tuple[int, int], dict[str, Any]]:
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for s in series:
        evse, conn = tag_int(s.tags.get("evse_id")), tag_int(s.tags.get("connector_id"))
        rows = s.rows()
        if evse is None or conn is None or not rows:
            continue
        out[evse, conn] = rows[0]
    return out


def _session(
    newest: dict[str, Any],
    active: dict[str, dict[str, Any]],
    now: datetime,
    connector: tuple[int, int],
) -> dict[str, Any] | None:
    tx = newest.get("transaction_id")
    if (not isinstance(tx, str) or not tx) and newest.get("status") in IN_TRANSACTION:
        # A status inside a transaction (OCPP's StatusNotification carries none): the
        # connector's active session goes on.
        own = [s for s in active.values() if (s["evse_id"], s["connector_id"]) == connector]
        tx = max(own, key=lambda s: s["started_at"])["transaction_id"] if own else None
    if not isinstance(tx, str) or not tx or newest.get("tx_event") == "ended":
        return None
    stored = active.get(tx)
    if stored is None:
        return dict.fromkeys(ActiveSession.model_fields) | {"transaction_id": tx}
    started = datetime.fromisoformat(stored["started_at"])
    meter_start = stored["meter_start_wh"]
    energy_now = _number(newest.get("energy_wh"))
    if energy_now is not None and meter_start is not None:
        energy = register_difference(meter_start, energy_now)
    else:
        energy = stored["energy_wh"]
    return {
        "transaction_id": tx,
        "started_at": stored["started_at"],
        "duration_s": round(max(0.0, (now - started).total_seconds()), 3),
        "energy_wh": energy,
        "meter_start_wh": meter_start,
    }


async def connectors_of(
    influx: InfluxQL,
    charger_id: str,
    *,
    now: datetime,
    window: timedelta,
    sessions_range: timedelta,
) -> list[dict[str, Any]]:
    """The :class:`Connector` documents of ``charger_id``, by (evse, connector)."""
    since = now - window
    active_q = influxql.sessions_query(
        now - sessions_range, now + _AHEAD, limit=_ACTIVE_LIMIT, charger_id=charger_id,
        state="active",
    )  # fmt: skip
    readings, statuses, sessions = await asyncio.gather(
        influx.query(influxql.connector_readings_query(charger_id, since)),
        influx.query(influxql.connector_status_query(charger_id, since)),
        influx.query(active_q),
    )
    active = {s["transaction_id"]: s for s in sessions_of(sessions)}
    status_of = _by_connector(statuses)
    out = []
    for (evse, conn), newest in sorted(_by_connector(readings).items()):
        st = status_of.get((evse, conn), {})
        status = st.get("status")
        out.append(
            {
                "evse_id": evse,
                "connector_id": conn,
                "status": status if isinstance(status, str) else None,
                "status_at": (
                    format_ts(from_epoch_ns(int(st["time"]))) if isinstance(status, str) else None
                ),
                "power_w": _number(newest.get("power_w")),
                "energy_wh": _number(newest.get("energy_wh")),
                "last_seen": format_ts(from_epoch_ns(int(newest["time"]))),
                "session": _session(newest, active, now, (evse, conn)),
            }
        )
    return out
