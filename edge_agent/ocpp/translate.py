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
  (``energy_wh`` at the transaction's timestamp), marked ``tx_event`` ``started`` / ``ended``,
  with the id tag's hash and, at the end, the ``stop_reason`` (OCPP's ``reason``; ``Local`` when
  the charger gives none, as 1.6 says; ``Other`` for one that is not an allowed id);
- BootNotification is a reading of connector 0 with no values, carrying ``charger_info``:
  vendor, model, serial (``chargePointSerialNumber``, else ``chargeBoxSerialNumber``) and
  firmware, each folded to printable ASCII and cut to 64 characters.
"""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from edge_agent.capture import Capture
from edge_agent.ocpp.mapping import ERROR_CODES, map_samples
from edge_agent.ocpp.models import MeterValue
from edge_agent.ocpp.sanity import ENERGY_KEY, EnergyGuard
from telemetry_common.ids import is_valid_id

log = logging.getLogger(__name__)

BEGIN = "Transaction.Begin"
#: OCPP 1.6: "when omitted, Local is assumed" (StopTransaction.req ``reason``).
DEFAULT_STOP_REASON: Final = "Local"
#: What a ``reason`` that is not an allowed id is stored as.
OTHER_STOP_REASON: Final = "Other"
MAX_INFO_CHARS: Final = 64


def info_text(value: str | None) -> str | None:
    """A text the charger says about itself, as the schema takes it: accents folded to ASCII,
    control characters dropped, any other character outside printable ASCII as ``?``, no
    surrounding spaces, at most 64 characters; None if nothing is left."""
    if value is None:
        return None
    folded = unicodedata.normalize("NFKD", value)
    chars = []
    for ch in folded:
        if " " <= ch <= "~":
            chars.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Mn", "Cf"):
            continue  # control characters, the accents NFKD split off, zero-width marks
        else:
            chars.append("?")
    text = "".join(chars).strip()[:MAX_INFO_CHARS].rstrip()
    return text or None


def stop_reason(reason: str | None) -> str:
    """The ``stop_reason`` stored for StopTransaction's ``reason``."""
    if reason is None:
        return DEFAULT_STOP_REASON
    if is_valid_id(reason):
        return reason
    log.warning(
        "ocpp: stop reason %r is not an allowed id: stored as %s", reason[:80], OTHER_STOP_REASON
    )
    return OTHER_STOP_REASON


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
        id_tag_hash: str | None = None,
        reason: str | None = None,
    ) -> list[Capture]:
        """The ``meterStart`` (``begin``: ``tx_event`` ``started``) or ``meterStop`` (``ended``,
        with its stop reason) of a transaction as a reading."""
        values = {ENERGY_KEY: float(wh)}
        self.guard.apply(charger_id, connector_id, ts, values, begin=begin)
        capture = dataclasses.replace(
            self._capture(charger_id, connector_id, ts, values, transaction_id),
            tx_event="started" if begin else "ended",
            stop_reason=None if begin else stop_reason(reason),
            id_tag_hash=id_tag_hash,
        )
        return self._checked([capture])

    def boot(
        self,
        charger_id: str,
        ts: datetime,
        *,
        vendor: str | None,
        model: str | None,
        serial: str | None,
        firmware: str | None,
    ) -> list[Capture]:
        """A BootNotification: a reading of connector 0 with no values, with ``charger_info``."""
        texts = {"vendor": vendor, "model": model, "serial": serial, "firmware": firmware}
        info = {k: t for k, v in texts.items() if (t := info_text(v)) is not None}
        capture = dataclasses.replace(self._capture(charger_id, 0, ts, {}), charger_info=info)
        return self._checked([capture])

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
