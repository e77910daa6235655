"""One charger's OCPP 2.0.1 session in local mode: the gateway as its CSMS (docs/ocpp.md).

The same rules as 1.6 (:class:`edge_agent.ocpp.session.SessionBase`): a request that carries
readings (BootNotification, StatusNotification, MeterValues, TransactionEvent) is answered only
once the agent has stored them; every malformed request gets its CALLERROR, spelled as 2.0.1
spells it (``FormatViolation``, ``OccurrenceConstraintViolation``); id tokens are hashed and never
logged. The telemetry requests are validated by our own models
(:mod:`edge_agent.ocpp.v201.models`: free strings where the schemas enumerate), the others by the
library's 2.0.1 schemas. An action 2.0.1 defines that is not handled here is answered
``NotImplemented``, one it does not define ``NotSupported`` (the library's rule).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from edge_agent.ocpp.frames import error_code_201
from edge_agent.ocpp.lib import call201, call_result201, datatypes201, on
from edge_agent.ocpp.session import SessionBase, Shared
from edge_agent.ocpp.v201.models import (
    BootNotificationReq,
    MeterValuesReq,
    StatusNotificationReq,
    TransactionEventReq,
    validate,
)
from edge_agent.ocpp.v201.translate import Translator201, transaction_id

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp2.0.1"


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _accepted() -> Any:
    # A telemetry gateway is no authority on id tokens: it accepts them (as 1.6 local mode).
    return datatypes201.IdTokenInfoType(status="Accepted")


async def keep_location(shared: Shared, charger_id: str, req: TransactionEventReq) -> None:
    """After a TransactionEvent's readings are stored: keep where its transaction runs in the
    state file (once per transaction, or when it moves) or forget it when it ended, so a
    gateway restart does not cost the later events their EVSE. The proxy calls this too."""
    tid = transaction_id(req.transaction_info.transaction_id)
    if req.event_type == "Ended":
        await shared.transactions.unlocate(charger_id, tid)
    elif (where := shared.translator.transaction_at(charger_id, tid)) is not None:
        await shared.transactions.locate(charger_id, tid, *where)


class ChargerSession201(SessionBase):
    """One charger's OCPP 2.0.1 session (the library's 2.0.1 messages and schemas)."""

    _call = call201
    _call_result = call_result201
    _ocpp_version = "2.0.1"

    def __init__(self, charger_id: str, connection: Any, shared: Shared) -> None:
        super().__init__(charger_id, connection, shared)
        self._tr = Translator201(shared.translator)

    def _spell(self, code: str) -> str:
        return error_code_201(code)

    @on("BootNotification", skip_schema_validation=True)
    async def on_boot_notification(self, **payload: Any) -> object:
        req = validate(BootNotificationReq, payload)
        station = req.charging_station
        log.info(
            "ocpp %s booted (%s): %s %s, firmware %s",
            self.id,
            req.reason,
            station.vendor_name,
            station.model,
            station.firmware_version or "?",
        )
        now = datetime.now(UTC)
        await self._emit(self._tr.boot(self.id, now, req))
        return call_result201.BootNotification(
            current_time=_iso(datetime.now(UTC)),
            interval=self._s.settings.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    async def on_heartbeat(self, **_: Any) -> object:
        return call_result201.Heartbeat(current_time=_iso(datetime.now(UTC)))

    @on("StatusNotification", skip_schema_validation=True)
    async def on_status_notification(self, **payload: Any) -> object:
        req = validate(StatusNotificationReq, payload)
        await self._emit(self._tr.status_notification(self.id, req))
        return call_result201.StatusNotification()

    @on("MeterValues", skip_schema_validation=True)
    async def on_meter_values(self, **payload: Any) -> object:
        req = validate(MeterValuesReq, payload)
        await self._emit(self._tr.meter_values(self.id, req))
        return call_result201.MeterValues()

    @on("TransactionEvent", skip_schema_validation=True)
    async def on_transaction_event(self, **payload: Any) -> object:
        req = validate(TransactionEventReq, payload)
        tag_hash = self._s.id_tag_hash(req.tag())
        await self._emit(self._tr.transaction_event(self.id, req, tag_hash))
        await keep_location(self._s, self.id, req)
        log.debug(
            "ocpp %s: transaction %s %s (%s, seqNo %d)",
            self.id,
            req.transaction_info.transaction_id,
            req.event_type,
            req.trigger_reason,
            req.seq_no,
        )
        if req.id_token is None:
            return call_result201.TransactionEvent()
        return call_result201.TransactionEvent(id_token_info=_accepted())

    @on("Authorize")
    async def on_authorize(self, **_: Any) -> object:
        return call_result201.Authorize(id_token_info=_accepted())

    @on("NotifyEvent")
    async def on_notify_event(self, **_: Any) -> object:
        return call_result201.NotifyEvent()

    @on("NotifyReport")
    async def on_notify_report(self, **_: Any) -> object:
        return call_result201.NotifyReport()

    @on("SecurityEventNotification")
    async def on_security_event(self, type: str, **_: Any) -> object:
        log.info("ocpp %s: security event %s", self.id, type)
        return call_result201.SecurityEventNotification()

    @on("FirmwareStatusNotification")
    async def on_firmware_status(self, status: str, **_: Any) -> object:
        log.info("ocpp %s: firmware %s", self.id, status)
        return call_result201.FirmwareStatusNotification()

    @on("LogStatusNotification")
    async def on_log_status(self, **_: Any) -> object:
        return call_result201.LogStatusNotification()

    @on("DataTransfer")
    async def on_data_transfer(self, **_: Any) -> object:
        return call_result201.DataTransfer(status="UnknownVendorId")
