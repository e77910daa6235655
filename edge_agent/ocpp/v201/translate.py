"""OCPP 2.0.1 requests -> Captures, through the same :class:`Translator` as 1.6 (docs/ocpp.md).

No I/O, like 1.6's translation: the session (local mode) and the tap (proxy mode) call these with
validated payloads. The rules, where they differ from 1.6:

- **EVSE and connector** are 2.0.1's own: ``evse.id`` / ``evseId`` -> ``evse_id``,
  ``evse.connectorId`` / ``connectorId`` -> ``connector_id``. A TransactionEvent names its EVSE
  only when it has to (the transaction's first event): the translator remembers where each
  open transaction runs (the session keeps it in the state file across restarts:
  :func:`edge_agent.ocpp.v201.session.keep_location`); one it never saw start is stored on
  EVSE 0, connector 0 (warning).
  MeterValues name an EVSE only: the connector is the open transaction's there, else 1 (0 for
  EVSE 0, the station's main meter).
- **Transaction ids** are strings of up to 36 characters; one our id rule
  (``^[A-Za-z0-9._-]{1,64}$``) refuses (2.0.1 also allows ``*=:+|@``) is stored as ``h-`` and
  the first 32 hex digits of its SHA-256, the same for every event of the transaction.
- **TransactionEvent** is one reading per ``meterValue`` (as MeterValues), at least one: without
  a usable meterValue it is a reading with no values at the event's ``timestamp``. ``Started``
  marks its earliest reading ``tx_event`` ``started`` (the ``Transaction.Begin`` meter value:
  ``energy_wh`` is the session's meter start), ``Ended`` its latest ``ended`` with
  ``stop_reason`` = ``stoppedReason`` (``Local`` when omitted: 2.0.1 allows the omission only for
  ``Local``). The idToken's hash goes on the marked reading (on ``Updated``, the first one).
  ``chargingState`` becomes the connector's status in 1.6's words (:data:`CHARGING_STATES`:
  ``Charging``, ``SuspendedEV``, ``SuspendedEVSE`` as they are; ``EVConnected`` and ``Idle``
  are ``Preparing`` while the transaction runs, ``Finishing`` and ``Available`` in ``Ended``).
- **StatusNotification** is a reading with ``connectorStatus`` as the status (``Available``,
  ``Reserved``, ``Unavailable``, ``Faulted`` as in 1.6; ``Occupied``, which 1.6 splits into
  Preparing/Charging/Suspended*/Finishing, as ``Occupied``, which the schema has; a value
  outside 2.0.1's enumeration: no status, a warning) and no values (2.0.1 reports errors through
  NotifyEvent). Like a MeterValues reading, it carries the transaction open on its EVSE, if
  any, so it never ends that session early (design.md's ``next`` rule).
- **BootNotification**: ``chargingStation`` ``vendorName``, ``model``, ``serialNumber``,
  ``firmwareVersion`` -> ``charger_info`` (as 1.6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from datetime import datetime
from typing import Final

from edge_agent.capture import Capture
from edge_agent.ocpp.translate import Translator, stop_reason
from edge_agent.ocpp.v201.models import (
    BootNotificationReq,
    Evse,
    MeterValuesReq,
    StatusNotificationReq,
    TransactionEventReq,
)
from telemetry_common.ids import is_valid_id

log = logging.getLogger(__name__)

HASHED_ID_PREFIX: Final = "h-"
#: chargingState -> the status (1.6's vocabulary), (while the transaction runs, at its end).
CHARGING_STATES: Final = {
    "Charging": ("Charging", "Charging"),
    "SuspendedEV": ("SuspendedEV", "SuspendedEV"),
    "SuspendedEVSE": ("SuspendedEVSE", "SuspendedEVSE"),
    "EVConnected": ("Preparing", "Finishing"),
    "Idle": ("Preparing", "Available"),
}
#: connectorStatus values (2.0.1's enumeration; each is also a status of the schema).
CONNECTOR_STATUSES: Final = frozenset(
    {"Available", "Occupied", "Reserved", "Unavailable", "Faulted"}
)


def transaction_id(raw: str) -> str:
    """A 2.0.1 transactionId as the schema's ``transaction_id`` (an allowed id)."""
    if is_valid_id(raw):
        return raw
    return HASHED_ID_PREFIX + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


class Translator201:
    """2.0.1 translation on top of the central system's shared :class:`Translator`."""

    def __init__(self, translator: Translator) -> None:
        self.tr = translator

    def transaction_event(
        self, charger_id: str, req: TransactionEventReq, id_tag_hash: str | None
    ) -> list[Capture]:
        tr = self.tr
        tid = transaction_id(req.transaction_info.transaction_id)
        evse, connector = self._where(charger_id, tid, req.evse)
        if req.event_type != "Ended":
            tr.open_transaction(charger_id, tid, evse, connector)
        state = req.transaction_info.charging_state
        if state is not None:
            if (statuses := CHARGING_STATES.get(state)) is not None:
                ended = req.event_type == "Ended"
                tr.set_status(charger_id, connector, statuses[ended], evse)
            else:
                log.warning("ocpp %s: chargingState %r is not 2.0.1's", charger_id, state[:40])
        captures = tr.meter_values(charger_id, connector, req.meter_value or (), tid, evse_id=evse)
        if not captures:
            captures = [tr.capture(charger_id, connector, req.timestamp, {}, tid, evse)]
        if req.event_type == "Started":
            i = min(range(len(captures)), key=lambda k: captures[k].ts)
            captures[i] = dataclasses.replace(
                captures[i], tx_event="started", id_tag_hash=id_tag_hash
            )
        elif req.event_type == "Ended":
            i = max(range(len(captures)), key=lambda k: captures[k].ts)
            reason = stop_reason(req.transaction_info.stopped_reason)
            captures[i] = dataclasses.replace(
                captures[i], tx_event="ended", stop_reason=reason, id_tag_hash=id_tag_hash
            )
            tr.close_transaction(charger_id, tid)
        elif id_tag_hash is not None:
            captures[0] = dataclasses.replace(captures[0], id_tag_hash=id_tag_hash)
        if req.offline:
            log.info(
                "ocpp %s: transaction %s event %d (%s) happened while offline",
                charger_id,
                tid,
                req.seq_no,
                req.event_type,
            )
        return tr.checked(captures)

    def meter_values(self, charger_id: str, req: MeterValuesReq) -> list[Capture]:
        evse = req.evse_id
        tid = self.tr.open_on(charger_id, evse)
        where = self.tr.transaction_at(charger_id, tid) if tid is not None else None
        connector = where[1] if where is not None else (1 if evse > 0 else 0)
        return self.tr.meter_values(charger_id, connector, req.meter_value, tid, evse_id=evse)

    def status_notification(self, charger_id: str, req: StatusNotificationReq) -> list[Capture]:
        status: str | None = req.connector_status
        if status not in CONNECTOR_STATUSES:
            log.warning(
                "ocpp %s: connectorStatus %r is not 2.0.1's: stored without a status",
                charger_id,
                req.connector_status[:40],
            )
            status = None
        return self.tr.status_notification(
            charger_id,
            req.connector_id,
            status,
            None,
            req.timestamp,
            evse_id=req.evse_id,
            transaction_id=self.tr.open_on(charger_id, req.evse_id),
        )

    def boot(self, charger_id: str, ts: datetime, req: BootNotificationReq) -> list[Capture]:
        station = req.charging_station
        return self.tr.boot(
            charger_id,
            ts,
            vendor=station.vendor_name,
            model=station.model,
            serial=station.serial_number,
            firmware=station.firmware_version,
        )

    def _where(self, charger_id: str, tid: str, evse: Evse | None) -> tuple[int, int]:
        known = self.tr.transaction_at(charger_id, tid)
        if evse is not None:
            if evse.connector_id is not None:
                return evse.id, evse.connector_id
            if known is not None and known[0] == evse.id:
                return known
            return evse.id, 1 if evse.id > 0 else 0
        if known is not None:
            return known
        log.warning(
            "ocpp %s: transaction %s names no EVSE and was not seen starting: stored on EVSE 0",
            charger_id,
            tid,
        )
        return 0, 0
