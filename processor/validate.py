"""Decode and validate one MQTT message into readings to store and records to dead-letter.

Fast path: the whole batch validates at once. Slow path (something is wrong): the envelope is
checked, then each reading on its own, so one bad reading never costs the good ones beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

import orjson
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processor.lineproto import ts_ns, ts_ns_all
from telemetry_common.ids import Id
from telemetry_common.schema import (
    EPOCH_SHAPE,
    MAX_BATCH_BYTES,
    MAX_BATCH_READINGS,
    READING_ROW_VALIDATOR,
    ROWS_VALIDATOR,
    SCHEMA_ID,
    TX_KEYS,
    ReadingRow,
    orphan_tx_keys,
)

# Machine-readable reasons carried by every dead-letter record.
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
INVALID_JSON: Final = "invalid_json"
INVALID_ENVELOPE: Final = "invalid_envelope"
GATEWAY_MISMATCH: Final = "gateway_mismatch"
INVALID_READING: Final = "invalid_reading"
TS_IN_FUTURE: Final = "ts_in_future"
TS_TOO_OLD: Final = "ts_too_old"
INFLUX_REJECTED: Final = "influx_rejected"
CHARGER_NOT_BOUND: Final = "charger_not_bound"
BAD_TOPIC: Final = "bad_topic"
SEQ_OUT_OF_RANGE: Final = "seq_out_of_range"
#: A per-gateway limit (:mod:`processor.limits`) or InfluxDB's own cardinality limits; the
#: detail starts with the limit's name.
LIMIT_EXCEEDED: Final = "limit_exceeded"

#: The gateway named in a dead letter whose topic names none.
UNKNOWN_GATEWAY: Final = "_invalid"


@dataclass(slots=True)
class TsWindow:
    """How far a reading's ``ts`` may lie from the processor's clock: at most ``max_future``
    ahead (a clock running fast) and ``max_age`` behind (a clock reset to 1970 or 2000 would
    otherwise store the reading decades back, a new InfluxDB shard per week it touches, and it
    would never become the latest value). ``max_age`` follows the raw retention
    (:mod:`processor.horizon` updates it in place)."""

    max_future: timedelta
    max_age: timedelta


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    #: The whole payload, or the one reading's JSON when ``index`` is set.
    raw: bytes
    index: int | None = None
    #: The outbox epoch of the batch a single reading came from (kept with its dead letter, so
    #: a replay sends the reading with it).
    epoch: str | None = None
    #: A message's refused readings as one record (``index`` None; see
    #: :func:`processor.outputs.deadletters.bulk_of`): ``(index, reason, detail)`` each, in
    #: payload order; ``raw`` is then the JSON array of those readings as sent.
    faults: tuple[tuple[int, str, str], ...] = ()


@dataclass(slots=True)
class Decoded:
    """A message's accepted readings (in payload order) and what was rejected."""

    rows: list[ReadingRow] = field(default_factory=list)
    #: Each row's ts in integer nanoseconds.
    nss: list[int] = field(default_factory=list)
    #: Each row's position in the payload's ``readings``.
    positions: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: The sender's outbox epoch (None: the gateway numbers its seqs for its whole life).
    epoch: str | None = None

    def keep(self, kept: list[int]) -> None:
        """Keep only the rows at these indexes (after some were rejected)."""
        self.rows = [self.rows[k] for k in kept]
        self.nss = [self.nss[k] for k in kept]
        self.positions = [self.positions[k] for k in kept]


class _Envelope(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    schema_: Literal["charger-telemetry/1"] = Field(alias="schema", default=SCHEMA_ID)
    gateway_id: Id
    epoch: Annotated[str, Field(pattern=EPOCH_SHAPE)] | None = None
    readings: list[Any] = Field(min_length=1, max_length=MAX_BATCH_READINGS)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
        for e in exc.errors(include_url=False)[:10]
    )


def decode_message(topic_gateway: str, payload: bytes, *, now: datetime, ts: TsWindow) -> Decoded:
    """Readings of ``payload`` (published on ``topic_gateway``'s topic) and what was rejected."""
    out = Decoded()
    if len(payload) > MAX_BATCH_BYTES:
        detail = f"{len(payload)} bytes > {MAX_BATCH_BYTES}"
        out.rejected.append(Rejected(PAYLOAD_TOO_LARGE, detail, payload))
        return out
    gateway_id: str | None
    try:
        batch = ROWS_VALIDATOR.validate_json(payload)
        gateway_id, out.rows = batch["gateway_id"], batch["readings"]
        out.epoch = batch.get("epoch")
        out.positions = list(range(len(out.rows)))
    except ValidationError:
        gateway_id = _slow_path(payload, out)
        if gateway_id is None:
            return out
    if gateway_id != topic_gateway:
        detail = f"body says {gateway_id!r}, topic says {topic_gateway!r}"
        out.rejected.append(Rejected(GATEWAY_MISMATCH, detail, payload))
        out.keep([])
        return out
    # Compared as integers: the nanoseconds are needed for the line anyway, and comparing
    # aware datetimes costs two utcoffset() calls per reading.
    out.nss = nss = ts_ns_all(out.rows)
    horizon, floor = ts_ns(now + ts.max_future), ts_ns(now - ts.max_age)
    if nss and (max(nss) > horizon or min(nss) < floor):
        items = raw_readings(payload)
        for k, ns in enumerate(nss):
            if floor <= ns <= horizon:
                continue
            at, i = out.rows[k]["ts"].isoformat(), out.positions[k]
            if ns > horizon:
                reason, detail = (
                    TS_IN_FUTURE,
                    f"ts {at} is more than {ts.max_future} ahead of {now}",
                )
            else:
                reason, detail = TS_TOO_OLD, f"ts {at} is more than {ts.max_age} before {now}"
            out.rejected.append(Rejected(reason, detail, orjson.dumps(items[i]), i))
        out.keep([k for k, ns in enumerate(nss) if floor <= ns <= horizon])
    if any(key in payload for key in _TX_KEY_BYTES):  # rare: a transaction's start or end
        _refuse_orphan_tx_keys(payload, out)
    return out


_TX_KEY_BYTES: Final = tuple(f'"{k}"'.encode() for k in TX_KEYS)


def _refuse_orphan_tx_keys(payload: bytes, out: Decoded) -> None:
    """Readings with a transaction key but no ``transaction_id`` are refused
    (``invalid_reading``, :func:`telemetry_common.schema.orphan_tx_keys`)."""
    orphans = {k: keys for k, r in enumerate(out.rows) if (keys := orphan_tx_keys(r))}
    if not orphans:
        return
    items = raw_readings(payload)
    for k, keys in orphans.items():
        i = out.positions[k]
        detail = f"{', '.join(keys)} without a transaction_id"
        out.rejected.append(Rejected(INVALID_READING, detail, orjson.dumps(items[i]), i))
    out.keep([k for k in range(len(out.rows)) if k not in orphans])


def _loads(payload: bytes) -> Any:
    """Parse JSON; a number too large for a double (``1e309``) is valid JSON, so it becomes inf
    here and is refused by the reading's own validation, not by the parser for the whole batch."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return pydantic_core.from_json(payload, allow_inf_nan=False)


def raw_readings(payload: bytes) -> list[Any]:
    """The ``readings`` of a payload that decoded, as parsed JSON (for dead letters about
    some of them: each is dumped again as it was sent)."""
    readings: list[Any] = _loads(payload)["readings"]
    return readings


def _slow_path(payload: bytes, out: Decoded) -> str | None:
    """Check the envelope, then each reading on its own; the gateway id if the envelope holds."""
    try:
        obj = _loads(payload)
    except ValueError as exc:
        out.rejected.append(Rejected(INVALID_JSON, str(exc), payload))
        return None
    try:
        env = _Envelope.model_validate(obj)
    except ValidationError as exc:
        out.rejected.append(Rejected(INVALID_ENVELOPE, _describe(exc), payload))
        return None
    out.epoch = env.epoch
    for i, item in enumerate(env.readings):
        raw = orjson.dumps(item)
        try:
            out.rows.append(READING_ROW_VALIDATOR.validate_json(raw))
        except ValidationError as exc:
            out.rejected.append(Rejected(INVALID_READING, _describe(exc), raw, i))
        else:
            out.positions.append(i)
    return env.gateway_id
