"""``latest``: from the mirror when memory is provably enough, else from InfluxDB (newest wins).

Memory alone answers when all of these hold:

- the API's broker session is up (the mirror is being fed);
- the value arrived more than ``live_settle_s`` ago: the bridge conflates its live feed (at most
  one publish per charger per ``TELEMETRY_BRIDGE_LIVE_INTERVAL_S``), so a younger value may have a
  newer stored reading waiting behind it;
- InfluxDB confirmed, less than ``latest_trust_s`` ago and after the value settled, that it holds
  nothing newer. This also covers a live publish the bridge lost: the next check finds the
  newer stored reading.

Otherwise InfluxDB is asked and the newer of the two values is served (and kept in the mirror),
so the answer is never older than what InfluxDB held when the request came in, except for the
window documented in docs/query-api.md (a live publish lost after a check, for at most
``latest_trust_s``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from query_api.mirror import Entry, LiveMirror
from query_api.settings import ApiSettings
from query_api.snapshot import Snapshot, from_row, newest
from query_api.state import charger_state
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.schema import format_ts

Source = Literal["mirror", "influxdb"]


def trusted(entry: Entry, settings: ApiSettings, mono: float) -> bool:
    """Whether the mirrored value alone may answer (with the broker session up): it settled,
    and InfluxDB confirmed it less than ``latest_trust_s`` ago."""
    return (
        mono - entry.received > settings.live_settle_s
        and mono - entry.checked <= settings.latest_trust_s
    )


async def get_latest(
    charger_id: str,
    *,
    mirror: LiveMirror,
    influx: InfluxQL,
    live: bool,
    settings: ApiSettings,
    mono: float,
) -> tuple[Snapshot, Source] | None:
    """The charger's newest reading and where it came from; None if none is stored."""
    entry = mirror.get(charger_id)
    if entry is not None and live and trusted(entry, settings, mono):
        return entry.snapshot, "mirror"
    settled = entry is None or mono - entry.received > settings.live_settle_s
    series = await influx.query(influxql.latest_query(charger_id))
    rows = [row for s in series for row in s.rows()]
    stored = from_row(charger_id, rows[0]) if rows else None
    if stored is not None:
        mirror.offer(stored, mono, checked=live and settled)
    elif entry is not None and live and settled:
        entry.checked = mono
    held = entry.snapshot if entry is not None else None
    best = newest(held, stored)
    if best is None:
        return None
    return best, "mirror" if best is held else "influxdb"


def latest_body(
    snapshot: Snapshot,
    source: Source,
    *,
    now: datetime,
    gateway_state: str | None,
    settings: ApiSettings,
) -> dict[str, Any]:
    """The :class:`~query_api.readings.LatestReading` document as a plain dict (the hot path
    skips building and validating a model)."""
    age_s = round((now - snapshot.ts).total_seconds(), 3)
    return {
        "charger_id": snapshot.charger_id,
        "gateway_id": snapshot.gateway_id,
        "evse_id": snapshot.evse_id,
        "connector_id": snapshot.connector_id,
        "seq": snapshot.seq,
        "ts": format_ts(snapshot.ts),
        "status": snapshot.status,
        "values": snapshot.values,
        "age_s": age_s,
        "state": charger_state(
            age_s,
            gateway_state,
            stale_after_s=settings.state_stale_after_s,
            offline_after_s=settings.state_offline_after_s,
        ),
        "source": source,
    }
