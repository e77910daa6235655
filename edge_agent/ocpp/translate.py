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
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from pydantic import ValidationError

from edge_agent.capture import Capture
from edge_agent.ocpp.mapping import ERROR_CODES, Sample, map_samples
from edge_agent.ocpp.sanity import ENERGY_KEY, EnergyGuard
from telemetry_common.ids import is_valid_id

if TYPE_CHECKING:
    from edge_agent.ocpp.models import StopTransactionReq

log = logging.getLogger(__name__)

BEGIN = "Transaction.Begin"
#: OCPP 1.6: "when omitted, Local is assumed" (StopTransaction.req ``reason``).
DEFAULT_STOP_REASON: Final = "Local"
#: What a ``reason`` that is not an allowed id is stored as.
OTHER_STOP_REASON: Final = "Other"
MAX_INFO_CHARS: Final = 64
K = TypeVar("K")
V = TypeVar("V")


class MeterValueLike(Protocol):
    """One ``meterValue`` of either OCPP version (validated, snake_case)."""

    @property
    def timestamp(self) -> datetime: ...
    @property
    def sampled_value(self) -> Sequence[Sample]: ...


def _remember(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """``memory[key] = value`` as the newest entry; the oldest goes beyond ``limit``."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > limit:
        del memory[next(iter(memory))]


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
    """One per central system: the connectors' statuses, the energy checks and (2.0.1) where
    the open transactions are. ``evse_id`` defaults to ``connector_id`` (1.6: each connector
    is its own EVSE); 2.0.1 passes both (:mod:`edge_agent.ocpp.v201.translate`)."""

    def __init__(self, guard: EnergyGuard | None = None, *, max_connectors: int = 100_000) -> None:
        self.guard = guard or EnergyGuard()
        self._status: dict[tuple[str, int, int], str] = {}
        #: (charger, transaction id) -> (evse, connector) of the transactions seen open (2.0.1
        #: names the EVSE only in a transaction's first TransactionEvent).
        self._tx_where: dict[tuple[str, str], tuple[int, int]] = {}
        #: (charger, evse) -> the transaction open on it (2.0.1).
        self._tx_open: dict[tuple[str, int], str] = {}
        self._max = max_connectors
        self.invalid_samples = 0
        self.signed_samples = 0
        self.rejected = 0

    def status(self, charger_id: str, connector_id: int, evse_id: int | None = None) -> str | None:
        evse = connector_id if evse_id is None else evse_id
        return self._status.get((charger_id, evse, connector_id))

    def set_status(
        self, charger_id: str, connector_id: int, status: str | None, evse_id: int | None = None
    ) -> None:
        """The connector's status from now on (what its next readings carry; None: unknown)."""
        key = (charger_id, connector_id if evse_id is None else evse_id, connector_id)
        if status is None:
            self._status.pop(key, None)
        else:
            _remember(self._status, key, status, self._max)

    def open_transaction(
        self, charger_id: str, transaction_id: str, evse_id: int, connector_id: int
    ) -> None:
        """Remember where a (2.0.1) transaction runs, until :meth:`close_transaction`."""
        _remember(self._tx_where, (charger_id, transaction_id), (evse_id, connector_id), self._max)
        _remember(self._tx_open, (charger_id, evse_id), transaction_id, self._max)

    def close_transaction(self, charger_id: str, transaction_id: str) -> None:
        where = self._tx_where.pop((charger_id, transaction_id), None)
        if where is not None and self._tx_open.get((charger_id, where[0])) == transaction_id:
            del self._tx_open[(charger_id, where[0])]

    def transaction_at(self, charger_id: str, transaction_id: str) -> tuple[int, int] | None:
        """The (evse, connector) of an open transaction, if it was seen."""
        return self._tx_where.get((charger_id, transaction_id))

    def open_on(self, charger_id: str, evse_id: int) -> str | None:
        """The transaction open on an EVSE, if one was seen starting and not ending."""
        return self._tx_open.get((charger_id, evse_id))

    def status_notification(
        self,
        charger_id: str,
        connector_id: int,
        status: str | None,
        error_code: str | None,
        ts: datetime,
        *,
        evse_id: int | None = None,
        transaction_id: str | None = None,
    ) -> list[Capture]:
        """A status change as a reading; ``error_code`` (1.6 only) as its value."""
        self.set_status(charger_id, connector_id, status, evse_id)
        values: dict[str, float] = {}
        if error_code is not None:
            values["error_code"] = ERROR_CODES.get(error_code, len(ERROR_CODES))
        capture = self.capture(charger_id, connector_id, ts, values, transaction_id, evse_id)
        return self.checked([capture])

    def meter_values(
        self,
        charger_id: str,
        connector_id: int,
        meter_values: Iterable[MeterValueLike],
        transaction_id: int | str | None,
        *,
        evse_id: int | None = None,
    ) -> list[Capture]:
        captures: list[Capture] = []
        evse = connector_id if evse_id is None else evse_id
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
            # The register is the EVSE's (in 1.6 the connector's, the same number).
            self.guard.apply(
                charger_id, evse, mv.timestamp, mapped.values, begin=BEGIN in mapped.contexts
            )
            captures.append(
                self.capture(
                    charger_id, connector_id, mv.timestamp, mapped.values, transaction_id, evse_id
                )
            )
        return self.checked(captures)

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
            self.capture(charger_id, connector_id, ts, values, transaction_id),
            tx_event="started" if begin else "ended",
            stop_reason=None if begin else stop_reason(reason),
            id_tag_hash=id_tag_hash,
        )
        return self.checked([capture])

    def stop_transaction(
        self, charger_id: str, connector_id: int, req: StopTransactionReq, id_tag_hash: str | None
    ) -> list[Capture]:
        """A 1.6 StopTransaction's readings: its ``transactionData``, then the ``meterStop``
        (the local central system and the proxy's tap both take them from here)."""
        tid = req.transaction_id
        captures = self.meter_values(charger_id, connector_id, req.transaction_data or (), tid)
        return captures + self.register(
            charger_id,
            connector_id,
            req.timestamp,
            req.meter_stop,
            tid,
            begin=False,
            id_tag_hash=id_tag_hash,
            reason=req.reason,
        )

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
        capture = dataclasses.replace(self.capture(charger_id, 0, ts, {}), charger_info=info)
        return self.checked([capture])

    def capture(
        self,
        charger_id: str,
        connector_id: int,
        ts: datetime,
        values: dict[str, float],
        transaction_id: int | str | None = None,
        evse_id: int | None = None,
    ) -> Capture:
        return Capture(
            charger_id=charger_id,
            ts=ts,
            values=values,
            status=self.status(charger_id, connector_id, evse_id),
            evse_id=connector_id if evse_id is None else evse_id,
            connector_id=connector_id,
            transaction_id=None if transaction_id is None else str(transaction_id),
        )

    def checked(self, captures: list[Capture]) -> list[Capture]:
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
