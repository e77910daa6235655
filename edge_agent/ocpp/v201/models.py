"""OCPP 2.0.1 payloads that carry telemetry, validated here rather than by the 2.0.1 schemas.

As for 1.6 (:mod:`edge_agent.ocpp.models`): the structure of the schemas (required fields, types,
no undefined properties, non-empty lists) with free strings where the schemas enumerate
(measurand, unit, phase, location, context, connector status, charging state, stopped and
trigger reasons), so one vendor value never costs a whole message. Field names are snake_case
with camelCase aliases: the same models read a raw frame's payload (the proxy's tap) and the
snake_case keyword arguments the ``ocpp`` library hands a handler. ``customData`` is allowed
everywhere, as 2.0.1 allows it, and ignored.

A payload that fails is refused with the OCPP 2.0.1 CALLERROR code for what is wrong
(:func:`validate`: 1.6's rules, 2.0.1's spelling).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from edge_agent.ocpp import models
from edge_agent.ocpp.lib import (
    FormationViolationError,
    FormatViolationError,
    OccurenceConstraintViolationError,
    OccurrenceConstraintViolationError,
)
from edge_agent.ocpp.models import Timestamp

Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )
    custom_data: dict[str, Any] | None = None


class UnitOfMeasure(_Strict):
    unit: Annotated[str, Field(max_length=20)] | None = None
    multiplier: int = 0


class SampledValue(_Strict):
    """A 2.0.1 sampledValue: ``value`` is a JSON number; ``unitOfMeasure`` a unit and a power
    of ten; a ``signedMeterValue`` accompanies the number (it is kept, the signature is not)."""

    value: float
    context: str | None = None
    measurand: str | None = None
    phase: str | None = None
    location: str | None = None
    signed_meter_value: dict[str, Any] | None = None
    unit_of_measure: UnitOfMeasure | None = None

    @property
    def unit(self) -> str | None:
        return None if self.unit_of_measure is None else self.unit_of_measure.unit

    @property
    def signed(self) -> bool:
        return False  # 2.0.1 always sends the number beside a signature

    def number(self) -> float:
        """``value`` x 10^``multiplier``; ValueError if that is not a finite number."""
        multiplier = 0 if self.unit_of_measure is None else self.unit_of_measure.multiplier
        try:
            number = self.value * 10.0**multiplier
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"out of range: {self.value!r} x 10^{multiplier}")
        return number


class MeterValue(_Strict):
    timestamp: Timestamp
    sampled_value: list[SampledValue] = Field(min_length=1)


class MeterValuesReq(_Strict):
    evse_id: Count
    meter_value: list[MeterValue] = Field(min_length=1)


class Evse(_Strict):
    id: Count
    connector_id: Count | None = None


class IdToken(_Strict):
    id_token: Annotated[str, Field(max_length=36, repr=False)]  # never in a log line
    type: str
    additional_info: list[dict[str, Any]] | None = None


class TransactionInfo(_Strict):
    transaction_id: Annotated[str, Field(min_length=1, max_length=36)]
    charging_state: str | None = None
    time_spent_charging: int | None = None
    stopped_reason: str | None = None
    remote_start_id: int | None = None


class TransactionEventReq(_Strict):
    event_type: Literal["Started", "Updated", "Ended"]
    timestamp: Timestamp
    trigger_reason: str
    seq_no: Count
    transaction_info: TransactionInfo
    meter_value: list[MeterValue] | None = Field(default=None, min_length=1)
    offline: bool = False
    number_of_phases_used: int | None = None
    cable_max_current: int | None = None
    reservation_id: int | None = None
    evse: Evse | None = None
    id_token: IdToken | None = None

    def tag(self) -> str | None:
        """The id token to hash, if the event names one (``NoAuthorization`` sends ``""``)."""
        return (
            self.id_token.id_token if self.id_token is not None and self.id_token.id_token else None
        )


class StatusNotificationReq(_Strict):
    timestamp: Timestamp
    connector_status: str
    evse_id: Count
    connector_id: Count


class Modem(_Strict):
    iccid: str | None = None
    imsi: str | None = None


class ChargingStation(_Strict):
    model: Annotated[str, Field(max_length=20)]
    vendor_name: Annotated[str, Field(max_length=50)]
    serial_number: Annotated[str, Field(max_length=25)] | None = None
    firmware_version: Annotated[str, Field(max_length=50)] | None = None
    modem: Modem | None = None


class BootNotificationReq(_Strict):
    charging_station: ChargingStation
    reason: str


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], payload: dict[str, Any]) -> M:
    """:func:`edge_agent.ocpp.models.validate` with the error codes spelled as 2.0.1 does."""
    try:
        return models.validate(model, payload)
    except FormationViolationError as exc:
        raise FormatViolationError(details=exc.details) from exc
    except OccurenceConstraintViolationError as exc:
        raise OccurrenceConstraintViolationError(details=exc.details) from exc
