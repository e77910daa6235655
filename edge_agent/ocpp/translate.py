"""OCPP 1.6 requests -> Captures: mapping, the connector status and the energy checks.

No I/O: the WebSocket session (:mod:`edge_agent.ocpp.session`) calls these methods with validated
payloads and hands the captures to the agent. The rules (docs/ocpp.md):

- each ``meterValue`` is one reading, ``ts`` = its timestamp; samples that are not numbers are
  counted in ``invalid_samples`` (so a meterValue of only bad samples is still a reading, which
  shows the fault); one of only signed samples gives no reading (logged);
- ``connectorId`` is both ``connector_id`` and ``evse_id`` (in 1.6 each connector is its own
  EVSE; 0 is the charger as a whole, as in our schema);
- ``transaction_id`` is the transaction the message names; without one the reading is kept with
  none;
- ``status`` is the last StatusNotification of that connector; a StatusNotification is itself a
  reading carrying ``error_code`` (0 = NoError), so a status change is stored even when no meter
  values follow;
- StartTransaction's ``meterStart`` and StopTransaction's ``meterStop`` are readings too
  (``energy_wh`` at the transaction's timestamp).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from pydantic import ValidationError

from edge_agent.capture import Capture
from edge_agent.ocpp.mapping import ERROR_CODES, map_samples
from edge_agent.ocpp.models import MeterValue
from edge_agent.ocpp.sanity import ENERGY_KEY, EnergyGuard

log = logging.getLogger(__name__)

BEGIN = "Transaction.Begin"


class Translator:
    def __init__(self, guard: EnergyGuard | None = None, *, max_connectors: int = 100_000) -> None:
        self.guard = guard or EnergyGuard()
        self._status: dict[tuple[str, int], str] = {}
        self._max = max_connectors
        self.invalid_samples = 0
        self.signed_samples = 0
        self.rejected = 0

    def status(self, charger_id: str, connector_id: int) -> str | None:
        return self._status.get((charger_id, connector_id))

    def status_notification(
        self, charger_id: str, connector_id: int, status: str, error_code: str, ts: datetime
    ) -> list[Capture]:
        self._status.pop((charger_id, connector_id), None)
        self._status[(charger_id, connector_id)] = status
        if len(self._status) > self._max:
            del self._status[next(iter(self._status))]
        code = ERROR_CODES.get(error_code, len(ERROR_CODES))
        return self._checked([self._capture(charger_id, connector_id, ts, {"error_code": code})])

    def meter_values(
        self,
        charger_id: str,
        connector_id: int,
        meter_values: Iterable[MeterValue],
        transaction_id: int | None,
    ) -> list[Capture]:
        captures: list[Capture] = []
        for mv in meter_values:
            mapped = map_samples(mv.sampled_value)
            self.invalid_samples += mapped.invalid
            self.signed_samples += mapped.signed
            for problem in mapped.problems:
                log.warning("ocpp %s connector %d: %s", charger_id, connector_id, problem)
            if not mapped.values:
                log.warning(
                    "ocpp %s connector %d: meterValue at %s has no usable sample: no reading",
                    charger_id,
                    connector_id,
                    mv.timestamp.isoformat(),
                )
                continue
            self.guard.apply(
                charger_id,
                connector_id,
                mv.timestamp,
                mapped.values,
                begin=BEGIN in mapped.contexts,
            )
            captures.append(
                self._capture(charger_id, connector_id, mv.timestamp, mapped.values, transaction_id)
            )
        return self._checked(captures)

    def register(
        self,
        charger_id: str,
        connector_id: int,
        ts: datetime,
        wh: int,
        transaction_id: int,
        *,
        begin: bool,
    ) -> list[Capture]:
        """The ``meterStart`` (``begin``) or ``meterStop`` of a transaction as a reading."""
        values = {ENERGY_KEY: float(wh)}
        self.guard.apply(charger_id, connector_id, ts, values, begin=begin)
        return self._checked([self._capture(charger_id, connector_id, ts, values, transaction_id)])

    def _capture(
        self,
        charger_id: str,
        connector_id: int,
        ts: datetime,
        values: dict[str, float],
        transaction_id: int | None = None,
    ) -> Capture:
        return Capture(
            charger_id=charger_id,
            ts=ts,
            values=values,
            status=self.status(charger_id, connector_id),
            evse_id=connector_id,
            connector_id=connector_id,
            transaction_id=None if transaction_id is None else str(transaction_id),
        )

    def _checked(self, captures: list[Capture]) -> list[Capture]:
        """Keep what the shared schema accepts (the agent would refuse the rest); report it."""
        kept: list[Capture] = []
        for c in captures:
            try:
                c.to_body()
            except ValidationError as exc:
                self.rejected += 1
                log.error(
                    "ocpp %s: reading at %s refused by the schema: %s",
                    c.charger_id,
                    c.ts.isoformat(),
                    "; ".join(e["msg"] for e in exc.errors(include_url=False)),
                )
                continue
            kept.append(c)
        return kept
