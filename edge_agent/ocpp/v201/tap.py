"""Telemetry out of a 2.0.1 charger's raw frames, for the proxy (the FrameTap seam).

:class:`Tap201` is pure (no I/O): the proxy hands it each CALL the charger sends (and each
CALLRESULT the CSMS answers) before forwarding the frame, stores the captures it returns, and
only then forwards. The payloads are the frames' own (camelCase); they are validated by the same
models as in local mode (:mod:`edge_agent.ocpp.v201.models`) and translated by the same
:class:`Translator201`. A payload the models refuse gives no captures (a warning; the frame is
still forwarded: the CSMS, not the gateway, answers it). 2.0.1 transaction ids are the
charger's, so no CALLRESULT carries telemetry: :meth:`Tap201.on_result` returns nothing.

Where each open transaction runs is kept by the shared translator (memory); to keep it across a
gateway restart, the proxy calls :func:`edge_agent.ocpp.v201.session.keep_location` with
:attr:`Tap201.event` once a TransactionEvent's captures are stored, as the local session does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edge_agent.capture import Capture
from edge_agent.ocpp.idtags import scrub, tags_in
from edge_agent.ocpp.session import Shared
from edge_agent.ocpp.tap import FrameTap
from edge_agent.ocpp.v201.models import (
    BootNotificationReq,
    MeterValuesReq,
    StatusNotificationReq,
    TransactionEventReq,
)
from edge_agent.ocpp.v201.translate import Translator201

__all__ = ["FrameTap", "Tap201"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def _now() -> datetime:
    return datetime.now(UTC)


class Tap201:
    """The FrameTap of one 2.0.1 charger connection."""

    def __init__(
        self, charger_id: str, shared: Shared, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self.charger_id = charger_id
        self._s = shared
        self._tr = Translator201(shared.translator)
        self._clock = clock
        #: Payloads the models refused (their frames were forwarded, no readings taken).
        self.refused = 0
        #: The TransactionEvent of the last :meth:`on_call`, validated (None: another action,
        #: or one the models refused): the proxy keeps its location once it is stored.
        self.event: TransactionEventReq | None = None

    def on_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> list[Capture]:
        cid, tr = self.charger_id, self._tr
        self.event = None
        match action:
            case "TransactionEvent":
                if (te := self._valid(TransactionEventReq, action, payload)) is None:
                    return []
                self.event = te
                return tr.transaction_event(cid, te, self._s.id_tag_hash(te.tag()))
            case "MeterValues":
                mv = self._valid(MeterValuesReq, action, payload)
                return [] if mv is None else tr.meter_values(cid, mv)
            case "StatusNotification":
                sn = self._valid(StatusNotificationReq, action, payload)
                return [] if sn is None else tr.status_notification(cid, sn)
            case "BootNotification":
                boot = self._valid(BootNotificationReq, action, payload)
                return [] if boot is None else tr.boot(cid, self._clock(), boot)
            case _:
                return []

    def on_result(
        self, unique_id: str, action: str, request: dict[str, Any], result: dict[str, Any]
    ) -> list[Capture]:
        return []

    def _valid(self, model: type[M], action: str, payload: dict[str, Any]) -> M | None:
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            self.refused += 1
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "payload"
            log.warning(
                "ocpp %s: %s not taken (forwarded as it is): %s: %s",
                self.charger_id,
                action,
                where,
                scrub(first["msg"], tags_in(payload)),
            )
            return None
