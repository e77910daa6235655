"""A reading as a source captures it: everything but ``seq``, which the outbox assigns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from telemetry_common.schema import Reading, orphan_tx_keys, reading_to_dict


@dataclass(frozen=True, slots=True)
class Capture:
    charger_id: str
    ts: datetime
    values: dict[str, float]
    status: str | None = None
    evse_id: int = 1
    connector_id: int = 1
    transaction_id: str | None = None
    #: With ``transaction_id``: ``"started"`` (the reading is the meterStart) or ``"ended"``
    #: (the meterStop).
    tx_event: str | None = None
    #: With ``tx_event`` ``"ended"``: why the transaction ended (OCPP's ``reason``).
    stop_reason: str | None = None
    #: The salted hash of the id tag (never the tag): :mod:`edge_agent.ocpp.idtags`.
    id_tag_hash: str | None = None
    #: What the charger says about itself: ``{vendor, model, serial, firmware}`` (each optional).
    charger_info: dict[str, str] | None = None

    def to_body(self) -> bytes:
        """Validate against the shared schema and return the JSON body stored in the outbox.

        The body has no ``seq``: the outbox splices it in when a batch is built.
        Raises pydantic's ValidationError for a capture the cloud would refuse.
        """
        reading = Reading.model_validate(
            {
                "charger_id": self.charger_id,
                "evse_id": self.evse_id,
                "connector_id": self.connector_id,
                "seq": 0,
                "ts": self.ts,
                "status": self.status,
                "transaction_id": self.transaction_id,
                "tx_event": self.tx_event,
                "stop_reason": self.stop_reason,
                "id_tag_hash": self.id_tag_hash,
                "charger_info": self.charger_info,
                "values": self.values,
            }
        )
        body = reading_to_dict(reading)
        orphans = orphan_tx_keys(dict(reading))
        if orphans:  # the cloud would refuse it (invalid_reading)
            raise ValidationError.from_exception_data(
                "Reading",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("transaction_missing", "needs a transaction_id"),
                        loc=(key,),
                        input=body[key],
                    )
                    for key in orphans
                ],
            )
        del body["seq"]
        return orjson.dumps(body)
