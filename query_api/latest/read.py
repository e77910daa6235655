"""``latest``: from the mirror when memory is provably enough (:mod:`query_api.latest.trust`),
else from InfluxDB (newest wins; lookups batched by :mod:`query_api.latest.stored`).

When memory is not enough, InfluxDB is asked and the newer of the two values is served (and kept
in the mirror), so the answer is never older than what InfluxDB held when the request came in,
except for the window documented in docs/query-api.md (a live publish lost after a check, for at
most ``latest_trust_s``).
"""

from __future__ import annotations

from query_api.latest.document import Source
from query_api.latest.mirror import LiveMirror
from query_api.latest.snapshot import Snapshot, newest
from query_api.latest.stored import StoredLatest
from query_api.latest.trust import settled, trusted
from query_api.settings import ApiSettings


async def get_latest(
    charger_id: str,
    *,
    mirror: LiveMirror,
    stored: StoredLatest,
    live: bool,
    settings: ApiSettings,
    mono: float,
) -> tuple[Snapshot, Source] | None:
    """The charger's newest reading and where it came from; None if none is stored."""
    entry = mirror.get(charger_id)
    if entry is not None and live and trusted(entry, settings, mono):
        return entry.snapshot, "mirror"
    was_settled = entry is None or settled(entry, settings, mono)
    found = await stored.newest(charger_id)
    if found is not None:
        mirror.offer(found, mono, checked=live and was_settled)
    elif entry is not None and live and was_settled:
        entry.checked = mono
    held = entry.snapshot if entry is not None else None
    best = newest(held, found)
    if best is None:
        return None
    return best, "mirror" if best is held else "influxdb"
