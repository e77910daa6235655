"""The ReadingBatch payload (DESIGN.md), strict: what the edge sends and the processor accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

from telemetry_common.ids import Id
from telemetry_common.storage import RESERVED_VALUE_KEYS

SCHEMA_ID: Final = "charger-telemetry/1"
MAX_BATCH_BYTES: Final = 256 * 1024
MAX_BATCH_READINGS: Final = 5_000
MAX_VALUE_KEYS: Final = 64
#: Values beyond this magnitude are a meter or encoding fault, not a measurement.
MAX_ABS_VALUE: Final = 1e15
#: InfluxDB stores int64 nanoseconds: 1677-09-21T00:12:43Z .. 2262-04-11T23:47:16Z.
TS_MIN: Final = datetime(1677, 9, 22, tzinfo=UTC)
TS_MAX: Final = datetime(2262, 4, 11, tzinfo=UTC)

Status = Literal[
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEVSE",
    "SuspendedEV",
    "Finishing",
    "Reserved",
    "Unavailable",
    "Faulted",
    "Occupied",
]
ValueKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


class Reading(BaseModel):
    """One meter reading of one connector at the meter's own time ``ts``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    charger_id: Id
    #: 0 means the charger as a whole (OCPP connector 0).
    evse_id: int = Field(default=0, ge=0, le=255)
    connector_id: int = Field(default=0, ge=0, le=255)
    seq: int = Field(ge=0, le=2**63 - 1)
    #: Kept in the zone it was sent in (every consumer converts); range checked natively.
    ts: Annotated[AwareDatetime, Field(ge=TS_MIN, le=TS_MAX)]
    status: Status | None = None
    transaction_id: Id | None = None
    values: dict[ValueKey, Value] = Field(max_length=MAX_VALUE_KEYS)

    @field_validator("values")
    @classmethod
    def _no_reserved_keys(cls, values: dict[str, float]) -> dict[str, float]:
        clash = RESERVED_VALUE_KEYS.intersection(values)
        if clash:
            raise ValueError(f"value keys {sorted(clash)} are reserved")
        return values


class ReadingBatch(BaseModel):
    """What a gateway publishes on ``{root}/{gateway_id}/readings``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    schema_: Literal["charger-telemetry/1"] = Field(alias="schema", default=SCHEMA_ID)
    gateway_id: Id
    readings: list[Reading] = Field(min_length=1, max_length=MAX_BATCH_READINGS)


READING_ADAPTER: Final = TypeAdapter(Reading)


def format_ts(ts: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, the form every payload uses."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reading_to_dict(reading: Reading) -> dict[str, object]:
    out = reading.model_dump(exclude_none=True)
    out["ts"] = format_ts(reading.ts)
    return out


def encode_batch(gateway_id: str, readings: list[Reading]) -> bytes:
    """Serialise a batch as the UTF-8 JSON payload of DESIGN.md."""
    return orjson.dumps(
        {
            "schema": SCHEMA_ID,
            "gateway_id": gateway_id,
            "readings": [reading_to_dict(r) for r in readings],
        }
    )


def decode_batch(payload: bytes) -> ReadingBatch:
    """Validate a whole payload at once (the fast path); raises pydantic's ValidationError."""
    return ReadingBatch.model_validate_json(payload)
