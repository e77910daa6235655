"""One charger's OCPP 1.6J connection: the requests a charger sends and their answers (2.0.1:
:mod:`edge_agent.ocpp.v201.session`, on the same :class:`SessionBase`).

Every request that carries readings is answered only once the agent has stored them (``emit``
returns when the outbox holds them): a charger drops what it queued only after our answer, so a
gateway crash or an agent stall never loses readings the charger believes delivered.

Id tags (StartTransaction, StopTransaction, Authorize) are hashed (:mod:`edge_agent.ocpp.idtags`)
and never logged: the library's own frame and error logs go through :class:`_WireLog`, which
takes them out, as does the warning for a refused request.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_agent.capture import Capture
from edge_agent.ocpp.frames import (
    FrameError,
    Response,
    call_error_json,
    error_code_16,
    parse_frame,
)
from edge_agent.ocpp.idtags import hash_id_tag, scrub, tags_in
from edge_agent.ocpp.lib import (
    ChargePoint,
    OCPPError,
    PropertyConstraintViolationError,
    call_result,
    datatypes,
    on,
)
from edge_agent.ocpp.models import MeterValuesReq, StopTransactionReq, parse_ts, validate
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.transactions import TransactionStore
from edge_agent.ocpp.translate import Translator

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    connections: int = 0
    refused: int = 0
    #: Handshakes refused for missing or wrong credentials (and throttled ones).
    auth_refused: int = 0
    #: Second connections for a connected charger id that did not authenticate.
    hijacks_refused: int = 0
    requests: int = 0
    call_errors: int = 0
    readings: int = 0


@dataclass(slots=True)
class Shared:
    """What every session of one central system shares."""

    settings: OcppSettings
    translator: Translator
    transactions: TransactionStore
    counters: Counters
    #: Hand captures to the agent; returns once they are stored.
    emit: Callable[[list[Capture]], Awaitable[None]]
    #: The id-tag salt (:func:`edge_agent.ocpp.idtags.load_salt`).
    id_tag_salt: bytes

    def id_tag_hash(self, id_tag: str | None) -> str | None:
        return None if id_tag is None else hash_id_tag(self.id_tag_salt, id_tag)


class _WireLog(logging.LoggerAdapter[logging.Logger]):
    """The library logs every frame at INFO and every refused request with a traceback: frames
    go to DEBUG, and an OCPP refusal is a warning without a traceback (a real fault keeps it).
    Whatever it logs (frames, requests' reprs) has its id tags taken out first."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        self.logger.log(level, "%s", scrub(text), **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(sys.exc_info()[1], OCPPError):
            self.warning(msg, *args, **kwargs)
        else:
            self.error(msg, *args, exc_info=exc_info, **kwargs)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(value: str) -> datetime:
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise PropertyConstraintViolationError(details={"cause": str(exc)}) from exc


class SessionBase(ChargePoint):
    """What a charger's session does whatever its OCPP version: every malformed request gets
    its CALLERROR (in the version's spelling), id tags never reach a log line, readings are
    answered after they are stored (:meth:`_emit`). A subclass adds the version's handlers
    (and, for 2.0.1, the library's 2.0.1 message classes: :mod:`edge_agent.ocpp.v201.session`)."""

    def __init__(self, charger_id: str, connection: Any, shared: Shared) -> None:
        super().__init__(charger_id, connection, logger=_WireLog(logging.getLogger(__name__)))
        self._s = shared

    def _spell(self, code: str) -> str:
        """An error code as this OCPP version spells it."""
        return error_code_16(code)

    async def route_message(self, raw_msg: str | bytes) -> None:
        """The library's router, but every malformed request gets its CALLERROR."""
        try:
            msg = parse_frame(raw_msg)
        except FrameError as exc:
            log.warning("ocpp %s: bad frame (%s), answered %s", self.id, exc.cause, exc.code)
            await self._send(exc.to_json(self._spell))
            return
        if isinstance(msg, Response):
            log.info("ocpp %s: ignored an answer (%s) to no request", self.id, msg.unique_id)
            return
        self._s.counters.requests += 1
        try:
            await self._handle_call(msg)
        except OCPPError as error:  # unknown action, payload refused by the 1.6 schema
            tags = tags_in(msg.payload)
            if tags and isinstance(error.details, dict):  # a schema error may quote the tag
                error.details = {
                    k: scrub(v, tags) for k, v in error.details.items() if isinstance(v, str)
                }
            log.warning(
                "ocpp %s: %s refused: %s %s", self.id, msg.action, error.code, error.details
            )
            await self._send(call_error_json(msg.unique_id, error, self._spell))

    async def _send(self, message: str) -> None:
        if message.startswith("[4,"):
            self._s.counters.call_errors += 1
        await super()._send(message)

    async def _emit(self, captures: list[Capture]) -> None:
        await self._s.emit(captures)
        self._s.counters.readings += len(captures)


class ChargerSession(SessionBase):
    """One charger's OCPP 1.6J session."""

    @on("BootNotification")
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **extra: Any
    ) -> object:
        log.info(
            "ocpp %s booted: %s %s, firmware %s",
            self.id,
            charge_point_vendor,
            charge_point_model,
            extra.get("firmware_version", "?"),
        )
        tr = self._s.translator
        serial = extra.get("charge_point_serial_number") or extra.get("charge_box_serial_number")
        await self._emit(
            tr.boot(
                self.id,
                _now(),
                vendor=charge_point_vendor,
                model=charge_point_model,
                serial=serial,
                firmware=extra.get("firmware_version"),
            )
        )
        return call_result.BootNotification(
            current_time=_iso(_now()),
            interval=self._s.settings.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    async def on_heartbeat(self) -> object:
        return call_result.Heartbeat(current_time=_iso(_now()))

    @on("StatusNotification")
    async def on_status_notification(
        self,
        connector_id: int,
        error_code: str,
        status: str,
        timestamp: str | None = None,
        **extra: Any,
    ) -> object:
        ts = _ts(timestamp) if timestamp is not None else _now()
        if error_code != "NoError":
            log.warning(
                "ocpp %s connector %d: %s, error %s (%s)",
                self.id,
                connector_id,
                status,
                error_code,
                extra.get("info") or extra.get("vendor_error_code") or "no detail",
            )
        tr = self._s.translator
        await self._emit(tr.status_notification(self.id, connector_id, status, error_code, ts))
        return call_result.StatusNotification()

    @on("MeterValues", skip_schema_validation=True)
    async def on_meter_values(self, **payload: Any) -> object:
        req = validate(MeterValuesReq, payload)
        tr = self._s.translator
        await self._emit(
            tr.meter_values(self.id, req.connector_id, req.meter_value, req.transaction_id)
        )
        return call_result.MeterValues()

    @on("StartTransaction")
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **extra: Any
    ) -> object:
        ts = _ts(timestamp)
        tid = await self._s.transactions.start(self.id, connector_id)
        log.info("ocpp %s connector %d: transaction %d started", self.id, connector_id, tid)
        tr = self._s.translator
        tag_hash = self._s.id_tag_hash(id_tag)
        await self._emit(
            tr.register(
                self.id, connector_id, ts, meter_start, tid, begin=True, id_tag_hash=tag_hash
            )
        )
        return call_result.StartTransaction(
            transaction_id=tid, id_tag_info=datatypes.IdTagInfo(status="Accepted")
        )

    @on("StopTransaction", skip_schema_validation=True)
    async def on_stop_transaction(self, **payload: Any) -> object:
        req = validate(StopTransactionReq, payload)
        tid = req.transaction_id
        where = self._s.transactions.open.get(tid)
        connector = where[1] if where is not None and where[0] == self.id else 0
        if where is None or where[0] != self.id:
            log.warning("ocpp %s: transaction %d is not one of its open ones", self.id, tid)
        tr = self._s.translator
        await self._emit(
            tr.stop_transaction(self.id, connector, req, self._s.id_tag_hash(req.id_tag))
        )
        await self._s.transactions.stop(tid)
        log.info("ocpp %s connector %d: transaction %d stopped", self.id, connector, tid)
        if req.id_tag is None:
            return call_result.StopTransaction()
        return call_result.StopTransaction(id_tag_info=datatypes.IdTagInfo(status="Accepted"))

    @on("Authorize")
    async def on_authorize(self, id_tag: str) -> object:
        # A telemetry gateway is no authority on id tags: it accepts them (docs/ocpp.md).
        return call_result.Authorize(id_tag_info=datatypes.IdTagInfo(status="Accepted"))

    @on("DataTransfer")
    async def on_data_transfer(self, vendor_id: str, **extra: Any) -> object:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on("FirmwareStatusNotification")
    async def on_firmware_status(self, status: str) -> object:
        log.info("ocpp %s: firmware %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    async def on_diagnostics_status(self, status: str) -> object:
        return call_result.DiagnosticsStatusNotification()
