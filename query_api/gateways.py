"""The gateway fleet view behind ``/v1/gateways`` (pure): each gateway's state and health from
its retained state topic (the live mirror's :class:`~query_api.latest.mirror.GatewayInfo`),
with its chargers from the charger index.

State:

- ``online``: the newest message is a birth or heartbeat, and not older than
  :data:`STALE_BEATS` heartbeat intervals (the interval the heartbeat announces, ``interval_s``;
  :data:`DEFAULT_INTERVAL_S`, the agent's default ``STATE_INTERVAL_S``, for an agent that does
  not announce it). Its age is taken on the bridges' clock: the gateway's ``ts`` corrected by
  the clock offset it reports.
- ``stale``: the newest message says ``online`` but is older than that: the agent stopped
  heartbeating without a last will reaching the broker (yet), or its clock is far off.
- ``offline``: the last will or a clean stop.
- ``unknown``: no retained state seen (the API has no broker session, or the gateway is known
  only from stored readings: an HTTP-ingest gateway, or one whose state topic was emptied).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from query_api.latest.mirror import GatewayInfo

GatewayStateName = Literal["online", "stale", "offline", "unknown"]
CertStatus = Literal["ok", "warning", "critical", "expired"]

#: Heartbeats missed before an ``online`` gateway is ``stale``.
STALE_BEATS: Final = 3.0
#: The heartbeat interval assumed when the heartbeat does not say (edge STATE_INTERVAL_S).
DEFAULT_INTERVAL_S: Final = 60.0
SECONDS_PER_DAY: Final = 86_400.0


@dataclass(slots=True)
class GatewayView:
    """One gateway as ``/v1/gateways`` shows it."""

    gateway_id: str
    state: GatewayStateName
    info: GatewayInfo | None
    charger_ids: list[str] = field(default_factory=list)
    age_s: float | None = None
    cert_days_left: float | None = None
    cert_status: CertStatus | None = None


def gateway_state(info: GatewayInfo | None, now: datetime) -> tuple[GatewayStateName, float | None]:
    """The state of a gateway whose newest retained message is ``info`` (None: none seen), and
    the age in seconds of its newest birth or heartbeat on the bridges' clock (None: none)."""
    if info is None:
        return "unknown", None
    age = None
    if info.last_online is not None:
        age = (now - info.last_online).total_seconds() + (info.clock_offset_s or 0.0)
    if info.state != "online":
        return "offline", age
    interval = info.interval_s or DEFAULT_INTERVAL_S
    if age is not None and age > STALE_BEATS * interval:
        return "stale", age
    return "online", age


def cert_status(
    not_after: datetime | None, now: datetime, *, warn_days: float, critical_days: float
) -> tuple[float | None, CertStatus | None]:
    """Days left until ``not_after`` and how urgent that is, by the ``certificate_expiry``
    alarm's thresholds (docs/alarms.md)."""
    if not_after is None:
        return None, None
    left = (not_after - now).total_seconds() / SECONDS_PER_DAY
    if left <= 0:
        return left, "expired"
    if left < critical_days:
        return left, "critical"
    if left < warn_days:
        return left, "warning"
    return left, "ok"


def fleet(
    infos: Mapping[str, GatewayInfo],
    chargers: Iterable[tuple[str, str | None]],
    now: datetime,
    *,
    warn_days: float,
    critical_days: float,
) -> list[GatewayView]:
    """Every gateway, sorted by id: those with a retained state, and those only the chargers
    name (``(charger_id, gateway_id)``, as the charger index holds them), ``unknown``."""
    by_gateway: dict[str, list[str]] = {}
    for charger_id, gateway_id in chargers:
        if gateway_id is not None:
            by_gateway.setdefault(gateway_id, []).append(charger_id)
    views = []
    for gw in sorted(infos.keys() | by_gateway.keys()):
        info = infos.get(gw)
        state, age = gateway_state(info, now)
        days, status = cert_status(
            info.cert_not_after if info is not None else None,
            now,
            warn_days=warn_days,
            critical_days=critical_days,
        )
        views.append(
            GatewayView(gw, state, info, sorted(by_gateway.get(gw, [])), age, days, status)
        )
    return views
