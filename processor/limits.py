"""Per-gateway limits (issue 21): what one gateway may add to the fleet's series and to the
bridge's state, so that one faulty or hostile gateway cannot exhaust InfluxDB's cardinality
(``max-values-per-tag``, ``max-series-per-database``: reached, they refuse every new charger of
the whole fleet) nor the bridge's memory.

A reading over a limit is dead-lettered ``limit_exceeded`` (the detail names the limit); the
other readings of its message are stored. The rules, per reading in payload order:

- ``evse_id`` above ``LIMIT_EVSE_ID`` or ``connector_id`` above ``LIMIT_CONNECTOR_ID``: refused
  (each pair is a series of its own).
- Its charger, if *new* for the gateway: refused once the gateway has
  ``LIMIT_CHARGERS_PER_GATEWAY`` chargers, or when it already added
  ``LIMIT_NEW_CHARGERS_PER_HOUR`` new chargers in the last hour (sliding window). A charger is
  not new when the gateway already has it (it sent for it before, or its newest stored reading
  came from the gateway: seeded from the last-value cache at warm-up) or when it is bound to the
  gateway (bindings file, bindings store, or first-come binding remembered through InfluxDB): an
  operator who binds a charger vouches for it, so it does not count against the hourly budget
  (it still counts towards the cap once it sends).
- Its value keys: refused when the keys its charger has used, with the reading's new ones, would
  exceed ``LIMIT_VALUE_KEYS_PER_CHARGER``.

What the limits remember is bounded: per gateway at most its cap of chargers (plus those seeded
from what is stored) and the times of at most its hourly budget of new ones; per charger at most
its cap of value keys. A charger or key counted is kept even if InfluxDB later refuses the
reading (the count errs towards refusing).

Imprecisions (docs/design.md, "Per-gateway limits"): every bridge of the shared subscription
counts what *it* sees, so with N bridges a gateway may add up to N times the hourly budget, and
up to N times the cap before a restart makes every bridge seed from what all of them stored.
Value keys are not seeded at a restart (InfluxDB keeps field keys per measurement, not per
charger): a charger's set starts empty, so a charger within its limit is never refused after a
restart, and one abusing it may add up to the limit again per bridge start.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from telemetry_common.schema import ReadingRow

#: The ``limit`` label of ``telemetry_bridge_limit_exceeded`` and the first word of a
#: ``limit_exceeded`` dead letter's detail.
CHARGERS_PER_GATEWAY: Final = "chargers_per_gateway"
NEW_CHARGERS_PER_HOUR: Final = "new_chargers_per_hour"
VALUE_KEYS_PER_CHARGER: Final = "value_keys_per_charger"
EVSE_ID: Final = "evse_id"
CONNECTOR_ID: Final = "connector_id"
#: InfluxDB's own limits, recognised in its refusals (:mod:`processor.outputs.influx`).
INFLUX_MAX_VALUES_PER_TAG: Final = "influx_max_values_per_tag"
INFLUX_MAX_SERIES_PER_DATABASE: Final = "influx_max_series_per_database"

HOUR_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The limits (0: no limit for the three counts)."""

    chargers_per_gateway: int = 1_000
    new_chargers_per_hour: int = 200
    value_keys_per_charger: int = 256
    evse_id: int = 16
    connector_id: int = 16


@dataclass(frozen=True, slots=True)
class OverLimit:
    """One reading refused: its row index in the message, which limit, and why."""

    row: int
    limit: str
    detail: str


class _Gateway:
    __slots__ = ("chargers", "new_at")

    def __init__(self) -> None:
        self.chargers: set[str] = set()
        #: Monotonic times of the new chargers added in the last hour (at most the budget).
        self.new_at: deque[float] = deque()


class GatewayLimits:
    """The per-gateway limits' rules and their bounded memory (see the module's docstring)."""

    def __init__(
        self,
        settings: LimitSettings,
        *,
        bound_to: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``bound_to(charger)``: the gateway the charger is bound to now, if any (a charger
        bound to its gateway is never new)."""
        self.settings = settings
        self._bound_to = bound_to or (lambda _c: None)
        self._clock = clock
        self._gateways: dict[str, _Gateway] = {}
        self._keys: dict[str, frozenset[str] | set[str]] = {}

    def seed(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Chargers the gateways already have (``(charger, gateway)``: what is stored, e.g.
        each charger's newest stored reading); they are never new again. Returns how many."""
        n = 0
        for charger_id, gateway_id in pairs:
            self._gateway(gateway_id).chargers.add(charger_id)
            n += 1
        return n

    def chargers(self, gateway_id: str) -> int:
        """How many chargers ``gateway_id`` has (as far as this bridge knows)."""
        gw = self._gateways.get(gateway_id)
        return len(gw.chargers) if gw is not None else 0

    def _gateway(self, gateway_id: str) -> _Gateway:
        gw = self._gateways.get(gateway_id)
        if gw is None:
            gw = self._gateways[gateway_id] = _Gateway()
        return gw

    def check(
        self, gateway_id: str, rows: Sequence[ReadingRow], chargers: Sequence[str]
    ) -> list[OverLimit]:
        """The readings of one message (``chargers[k]`` is ``rows[k]``'s charger) over a limit;
        the others are counted as accepted (their chargers and keys remembered)."""
        s = self.settings
        gw = self._gateway(gateway_id)
        known = gw.chargers
        keys = self._keys
        max_keys = s.value_keys_per_charger
        max_evse, max_conn = s.evse_id, s.connector_id
        out: list[OverLimit] = []
        for k, (row, charger_id) in enumerate(zip(rows, chargers, strict=True)):
            if row["evse_id"] > max_evse:
                detail = f"{EVSE_ID}: evse_id {row['evse_id']} is above {max_evse}"
                out.append(OverLimit(k, EVSE_ID, detail))
                continue
            if row["connector_id"] > max_conn:
                detail = f"{CONNECTOR_ID}: connector_id {row['connector_id']} is above {max_conn}"
                out.append(OverLimit(k, CONNECTOR_ID, detail))
                continue
            if charger_id not in known:
                refused = self._admit(gateway_id, gw, charger_id)
                if refused is not None:
                    out.append(OverLimit(k, *refused))
                    continue
            values = row["values"]
            held = keys.get(charger_id)
            if held is not None and values.keys() <= held:
                continue
            fresh = values.keys() - held if held is not None else set(values)
            if not fresh:
                continue
            size = len(held) if held is not None else 0
            if max_keys and size + len(fresh) > max_keys:
                detail = (
                    f"{VALUE_KEYS_PER_CHARGER}: charger {charger_id!r} has {size} value keys; "
                    f"{len(fresh)} new ones ({', '.join(sorted(fresh)[:5])}) would exceed "
                    f"{max_keys}"
                )
                out.append(OverLimit(k, VALUE_KEYS_PER_CHARGER, detail))
                continue
            keys[charger_id] = set(fresh) if held is None else held | fresh
        return out

    def _admit(self, gateway_id: str, gw: _Gateway, charger_id: str) -> tuple[str, str] | None:
        """Count ``charger_id`` as the gateway's, or say which limit refuses it."""
        s = self.settings
        if s.chargers_per_gateway and len(gw.chargers) >= s.chargers_per_gateway:
            return CHARGERS_PER_GATEWAY, (
                f"{CHARGERS_PER_GATEWAY}: gateway {gateway_id!r} already has "
                f"{len(gw.chargers)} chargers, the most it may have; charger {charger_id!r} "
                "is refused"
            )
        if self._bound_to(charger_id) != gateway_id and s.new_chargers_per_hour:
            now = self._clock()
            new_at = gw.new_at
            while new_at and new_at[0] <= now - HOUR_S:
                new_at.popleft()
            if len(new_at) >= s.new_chargers_per_hour:
                return NEW_CHARGERS_PER_HOUR, (
                    f"{NEW_CHARGERS_PER_HOUR}: gateway {gateway_id!r} added "
                    f"{len(new_at)} new chargers in the last hour, the most it may; charger "
                    f"{charger_id!r} is refused"
                )
            new_at.append(now)
        gw.chargers.add(charger_id)
        return None

    def status(self) -> dict[str, object]:
        """Sizes (the bridge's ``/status``)."""
        return {
            "gateways": len(self._gateways),
            "chargers": sum(len(g.chargers) for g in self._gateways.values()),
            "chargers_with_keys": len(self._keys),
        }
