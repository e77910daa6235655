"""The trust rule: when the mirrored value alone may answer ``latest`` (pure).

Memory alone answers when all of these hold:

- the API's broker session is up (the mirror is being fed; the caller knows);
- the value arrived more than ``live_settle_s`` ago: the bridge conflates its live feed (at most
  one publish per charger per ``TELEMETRY_BRIDGE_LIVE_INTERVAL_S``), so a younger value may have a
  newer stored reading waiting behind it;
- InfluxDB confirmed, less than ``latest_trust_s`` ago and after the value settled, that it holds
  nothing newer (:mod:`query_api.latest.sweep` in bulk, :mod:`query_api.latest.read` per miss).
  This also covers a live publish the bridge lost: the next check finds the newer stored reading.
"""

from __future__ import annotations

from query_api.latest.mirror import Entry
from query_api.settings import ApiSettings


def settled(entry: Entry, settings: ApiSettings, mono: float) -> bool:
    """Whether the value arrived more than ``live_settle_s`` before ``mono``."""
    return mono - entry.received > settings.live_settle_s


def trusted(entry: Entry, settings: ApiSettings, mono: float) -> bool:
    """Whether the mirrored value alone may answer (with the broker session up): it settled,
    and InfluxDB confirmed it less than ``latest_trust_s`` ago."""
    return settled(entry, settings, mono) and mono - entry.checked <= settings.latest_trust_s
