"""Payloads that carry meter values, validated here rather than by the library's 1.6 schemas.

The 1.6 JSON schemas enumerate measurands, units, phases and locations: a charger that sends a
vendor measurand would have its whole MeterValues refused (and its data lost). These models keep
the schemas' structure (required fields, types, no extra properties, at least one meterValue and
one sampledValue) but accept any string as measurand/unit/phase/location/context/format, so the
mapping can keep an unknown measurand under a sanitised key. Field names are snake_case: the
library converts the payload before calling a handler.

A payload that fails is refused with the OCPP 1.6 CALLERROR code for what is wrong.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from edge_agent.ocpp.lib import (
    FormationViolationError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)

_INT32 = 2**31 - 1
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_decimal(text: str) -> float:
    """An OCPP 1.6 value string, strictly: ASCII digits, optional ``-``, fraction and exponent.

    Refused: ``NaN``, ``inf``, ``+1``, ``1_000``, ``0x1F``, ``" 1"``, ``"1,5"``, ``""``, non-ASCII
    digits, and anything that overflows to infinity.
    """
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a finite decimal number: {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"out of range: {text[:40]!r}")
    return value


def parse_ts(value: object) -> datetime:
    """An OCPP dateTime: ISO 8601; without an offset it is read as UTC (what 1.6 recommends)."""
    if isinstance(value, datetime):  # built in code (tests), not decoded from a frame
        ts = value
    elif not isinstance(value, str):
        raise PydanticCustomError("string_type", "timestamp must be a string")
    else:
        problem = f"timestamp {value[:40]!r} is not an ISO 8601 date-time"
        if len(value) <= len("2026-05-01"):  # a date alone would silently mean midnight
            raise ValueError(problem)
        try:
            ts = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(problem) from exc
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, BeforeValidator(parse_ts)]
Int32 = Annotated[int, Field(ge=-_INT32 - 1, le=_INT32)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SampledValue(_Strict):
    value: str
    context: str | None = None
    format: str | None = None
    measurand: str | None = None
    phase: str | None = None
    location: str | None = None
    unit: str | None = None

    @property
    def signed(self) -> bool:
        """A 1.6 ``SignedData`` sample: its value is a signature, not a number."""
        return self.format == "SignedData"

    def number(self) -> float:
        """The value (a string in 1.6) as a number; ValueError unless a strict decimal."""
        return parse_decimal(self.value)


class MeterValue(_Strict):
    timestamp: Timestamp
    sampled_value: list[SampledValue] = Field(min_length=1)


class MeterValuesReq(_Strict):
    connector_id: Annotated[int, Field(ge=0, le=255)]
    transaction_id: Int32 | None = None
    meter_value: list[MeterValue] = Field(min_length=1)


class StopTransactionReq(_Strict):
    meter_stop: Int32
    timestamp: Timestamp
    transaction_id: Int32
    id_tag: Annotated[str, Field(max_length=20)] | None = None
    reason: str | None = None
    transaction_data: list[MeterValue] | None = None


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], payload: dict[str, Any]) -> M:
    """Validate a snake_case payload; raise the OCPP error that names the first problem."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ocpp_error(exc) from exc


def ocpp_error(exc: ValidationError) -> OCPPError:
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    where = ".".join(map(str, first["loc"])) or "payload"
    details = {"cause": f"{where}: {first['msg']}"}
    if kind == "missing":
        return ProtocolError(details=details)
    if kind == "extra_forbidden":
        return FormationViolationError(details=details)
    if kind in ("too_short", "too_long") and first.get("ctx", {}).get("field_type") == "List":
        return OccurenceConstraintViolationError(details=details)
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "is_instance_of":
        return TypeConstraintViolationError(details=details)
    return PropertyConstraintViolationError(details=details)
