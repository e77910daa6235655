"""Telemetry out of the raw OCPP frames that the proxy relays (docs/ocpp.md#what-is-tapped).

The :class:`FrameTap` protocol is defined here, once; :class:`Tap16` is 1.6J's,
:class:`edge_agent.ocpp.v201.tap.Tap201` 2.0.1's.

A :class:`FrameTap` sees one charger connection's CALLs (before they are forwarded) and the
CALLRESULTs to them (before they go back to the charger) and turns them into the same captures
as the local central system (:class:`edge_agent.ocpp.translate.Translator`). It never changes a
frame and never refuses one: a payload it cannot read gives no capture (logged, the tag never in
the log) and the frame goes on to the CSMS, which answers it.

``transaction_id`` in the readings is the id the *charger* uses (the one every frame from it
carries): the CSMS's when the CSMS was reachable at StartTransaction, else the gateway's
(negative) id, even after the CSMS assigned its own on replay. So one transaction is one session
in the cloud, whatever happened upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from edge_agent.capture import Capture
from edge_agent.ocpp.lib import OCPPError, camel_to_snake_case
from edge_agent.ocpp.models import MeterValuesReq, StopTransactionReq, parse_ts, validate
from edge_agent.ocpp.session import Shared

log = logging.getLogger(__name__)


class FrameTap(Protocol):
    """Telemetry out of one charger's raw OCPP frames; pure (no I/O), one per charger connection."""

    def on_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> list[Capture]:
        """A CALL from the charger (before it is forwarded)."""
        ...

    def on_result(
        self, unique_id: str, action: str, request: dict[str, Any], result: dict[str, Any]
    ) -> list[Capture]:
        """The CALLRESULT to a charger's CALL (before it is forwarded to the charger);
        e.g. StartTransaction.conf's transactionId."""
        ...


#: (charger id, transaction id) -> the transaction's connector, if known.
ConnectorOf = Callable[[str, int], int | None]


class NullTap:
    """For a subprotocol without a tap: frames are relayed, nothing is captured."""

    def on_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> list[Capture]:
        return []

    def on_result(
        self, unique_id: str, action: str, request: dict[str, Any], result: dict[str, Any]
    ) -> list[Capture]:
        return []


class Tap16:
    """OCPP 1.6J: BootNotification, StatusNotification, MeterValues, Start/StopTransaction."""

    def __init__(self, charger_id: str, shared: Shared, connector_of: ConnectorOf) -> None:
        self.charger_id = charger_id
        self._s = shared
        self._connector_of = connector_of

    def on_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> list[Capture]:
        try:
            return self._call(action, payload)
        except (OCPPError, KeyError, TypeError, ValueError) as exc:
            cause = exc.details if isinstance(exc, OCPPError) else type(exc).__name__
            log.warning(
                "ocpp %s: %s %s not tapped (%s): relayed as is",
                self.charger_id,
                action,
                unique_id,
                cause,
            )
            return []

    def on_result(
        self, unique_id: str, action: str, request: dict[str, Any], result: dict[str, Any]
    ) -> list[Capture]:
        tid = result.get("transactionId")
        if action != "StartTransaction":
            return []
        if not isinstance(tid, int) or isinstance(tid, bool):
            log.warning(
                "ocpp %s: StartTransaction %s: no transactionId", self.charger_id, unique_id
            )
            return []
        try:
            return self._s.translator.register(
                self.charger_id,
                int(request["connectorId"]),
                parse_ts(request["timestamp"]),
                int(request["meterStart"]),
                tid,
                begin=True,
                id_tag_hash=self._s.id_tag_hash(request.get("idTag")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "ocpp %s: StartTransaction %s not tapped (%s)",
                self.charger_id,
                unique_id,
                type(exc).__name__,
            )
            return []

    def _call(self, action: str, payload: dict[str, Any]) -> list[Capture]:
        tr, cid = self._s.translator, self.charger_id
        if action == "BootNotification":
            return tr.boot(
                cid,
                datetime.now(UTC),
                vendor=payload.get("chargePointVendor"),
                model=payload.get("chargePointModel"),
                serial=payload.get("chargePointSerialNumber")
                or payload.get("chargeBoxSerialNumber"),
                firmware=payload.get("firmwareVersion"),
            )
        if action == "StatusNotification":
            ts = payload.get("timestamp")
            return tr.status_notification(
                cid,
                int(payload["connectorId"]),
                str(payload["status"]),
                str(payload["errorCode"]),
                parse_ts(ts) if ts is not None else datetime.now(UTC),
            )
        if action == "MeterValues":
            mv = validate(MeterValuesReq, camel_to_snake_case(payload))
            return tr.meter_values(cid, mv.connector_id, mv.meter_value, mv.transaction_id)
        if action == "StopTransaction":
            req = validate(StopTransactionReq, camel_to_snake_case(payload))
            tid = req.transaction_id
            connector = self._connector_of(cid, tid)
            if connector is None:
                log.warning("ocpp %s: transaction %d is not one it started here", cid, tid)
                connector = 0
            return tr.stop_transaction(cid, connector, req, self._s.id_tag_hash(req.id_tag))
        return []


def _unknown(charger_id: str, transaction_id: int) -> int | None:
    return None


def tap_for(
    subprotocol: str | None,
    charger_id: str,
    shared: Shared,
    *,
    connector_of: ConnectorOf = _unknown,
) -> FrameTap:
    """The tap for a negotiated subprotocol (``ocpp1.6``, ``ocpp2.0.1``); a :class:`NullTap`
    for others. ``connector_of`` finds the connector of a 1.6 transaction started earlier
    (StopTransaction does not name it; 2.0.1's translator keeps its own)."""
    if subprotocol == "ocpp1.6":
        return Tap16(charger_id, shared, connector_of)
    if subprotocol == "ocpp2.0.1":
        from edge_agent.ocpp.v201.tap import Tap201  # here: v201.tap imports this module

        return Tap201(charger_id, shared)
    log.warning("ocpp %s: no tap for subprotocol %r: relayed only", charger_id, subprotocol)
    return NullTap()
