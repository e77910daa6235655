"""A charger's state from the age of its newest reading and its gateway's birth/last will (pure).

``offline``: the gateway's retained state says ``offline`` (its last will, or a clean goodbye),
or the newest reading is older than ``offline_after_s``. ``stale``: older than
``stale_after_s``. ``online``: otherwise.
"""

from __future__ import annotations

from typing import Literal

ChargerState = Literal["online", "stale", "offline"]
CHARGER_STATES: tuple[ChargerState, ...] = ("online", "stale", "offline")


def charger_state(
    age_s: float, gateway_state: str | None, *, stale_after_s: float, offline_after_s: float
) -> ChargerState:
    if gateway_state == "offline" or age_s > offline_after_s:
        return "offline"
    if age_s > stale_after_s:
        return "stale"
    return "online"
