"""Dead letters as the API lists and replays them (pure): the item of an InfluxDB row, the
replay request, and the payload a replay publishes.

What a dead letter keeps (processor/outputs/deadletters.py): for a whole message (``index``
and ``indexes`` null: invalid JSON, a wrong envelope, a gateway mismatch, ...) the payload as it
came; for the refused readings of a message (``indexes`` set: charger_not_bound, ts_in_future,
invalid_reading, ...: one record per message) the JSON array of those readings; and, written
before records were one per message and still in deployed databases, one reading of a batch
(``index`` set) with that reading's JSON alone. A replay publishes the first as it is, and wraps
the others' readings in a ReadingBatch of the dead letter's gateway. Only the first 256 KiB are
stored (32 KiB before records were one per message): a dead letter cut short (``payload_bytes``
above what is stored) cannot be replayed.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any, Final, Protocol, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from telemetry_common.deadletters import REASON_PATTERN, DeadLetterKey, encode_id
from telemetry_common.ids import ID_PATTERN
from telemetry_common.schema import EPOCH_SHAPE, SCHEMA_ID, format_ts

#: Dead letters one replay request may name or select.
REPLAY_MAX: Final = 1000
#: The gateway of a dead letter whose topic named none: nothing to replay it on.
UNKNOWN_GATEWAY: Final = "_invalid"
_EPOCH: Final = re.compile(EPOCH_SHAPE)


class Fault(BaseModel):
    """One refused reading of a message's dead letter."""

    index: int
    reason: str
    detail: str


class DeadLetter(BaseModel):
    """One dead letter (docs/query-api.md#dead-letters)."""

    id: str = Field(description="stable, opaque; for /v1/deadletters/{id} and replay")
    reason: str
    detail: str | None
    gateway_id: str
    topic: str | None
    received_at: str = Field(description="when the bridge refused it (RFC 3339 UTC)")
    index: int | None = Field(description="the reading's position in its batch; null: whole")
    payload_bytes: int | None
    payload_truncated: bool = Field(description="only the first 256 KiB are stored")
    payload_b64: str | None
    replayed_at: str | None = Field(description="when the last replay was committed")
    replay_outcome: str | None = Field(description="`stored` or `deadlettered:<reason>`")
    epoch: str | None = Field(
        default=None, description="the refused readings' batch epoch (a replay sends it along)"
    )
    count: int | None = Field(
        default=None, description="how many readings of the message it holds; null: whole"
    )
    indexes: list[int] | None = Field(
        default=None, description="their positions in the message's readings, ascending"
    )
    reasons: dict[str, int] | None = Field(
        default=None, description="how many of them were refused for each reason"
    )
    faults: list[Fault] | None = Field(
        default=None, description="index, reason and detail of the first 100 of them"
    )


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` (same filters) for the next page"
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _epoch(value: Any) -> str | None:
    return value if isinstance(value, str) and _EPOCH.fullmatch(value) else None


def stored_bytes(payload_b64: str | None) -> bytes | None:
    """The bytes a dead letter stores (None if it stores none, or not as base64)."""
    if payload_b64 is None:
        return None
    try:
        return base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        return None


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _payload_b64(row: dict[str, Any]) -> str | None:
    """The stored payload, its fields ``payload_b64``, ``payload_b64_1``, ... joined."""
    first = _str(row.get("payload_b64"))
    if first is None or _str(row.get("payload_b64_1")) is None:
        return first
    parts = []
    for n in range(64):
        chunk = stored_bytes(_str(row.get("payload_b64" if n == 0 else f"payload_b64_{n}")))
        if chunk is None:
            break
        parts.append(chunk)
    return base64.b64encode(b"".join(parts)).decode()


def _faults(row: dict[str, Any]) -> tuple[list[int], dict[str, int], list[Fault]] | None:
    indexes, reasons, faults = (_json(row.get(k)) for k in ("indexes", "reasons", "faults"))
    if not isinstance(indexes, list) or not all(isinstance(i, int) for i in indexes):
        return None
    if not isinstance(reasons, dict):
        reasons = {}
    kept = [
        Fault(index=f["index"], reason=str(f.get("reason")), detail=str(f.get("detail")))
        for f in faults or []
        if isinstance(f, dict) and isinstance(f.get("index"), int)
    ]
    return indexes, {str(k): v for k, v in reasons.items() if isinstance(v, int)}, kept


def item_of(row: dict[str, Any]) -> DeadLetter:
    """The dead letter of one row of ``SELECT * FROM deadletters`` (time in ns): one of a whole
    message, of a message's refused readings (``indexes``), or (written before records were one
    per message) of one reading (``index``)."""
    ns = int(row["time"])
    key = DeadLetterKey(ns, str(row["reason"]), str(row["gateway_id"]))
    payload_b64 = _payload_b64(row)
    bulk = _faults(row)
    payload_bytes = _int(row.get("payload_bytes"))
    kept = stored_bytes(payload_b64)
    truncated = payload_bytes is not None and (kept is None or payload_bytes > len(kept))
    return DeadLetter(
        id=encode_id(key),
        reason=key.reason,
        detail=_str(row.get("detail")),
        gateway_id=key.gateway_id,
        topic=_str(row.get("topic")),
        received_at=format_ts(datetime.fromtimestamp(ns / 1e9, UTC)),
        index=_int(row.get("index")),
        payload_bytes=payload_bytes,
        payload_truncated=truncated,
        payload_b64=payload_b64,
        replayed_at=_str(row.get("replayed_at")),
        replay_outcome=_str(row.get("replay_outcome")),
        epoch=_epoch(row.get("epoch")),
        count=None if bulk is None else (_int(row.get("count")) or len(bulk[0])),
        indexes=None if bulk is None else bulk[0],
        reasons=None if bulk is None else bulk[1],
        faults=None if bulk is None else bulk[2],
    )


class NotReplayable(ValueError):
    """A dead letter that cannot be replayed (the reason goes into the answer)."""


def replay_payload(item: DeadLetter) -> bytes:
    """What a replay of ``item`` publishes on ``{root}/replay/{gateway_id}/readings``: the
    message as it came, or a ReadingBatch around its refused readings (or the one reading of a
    record written before records were one per message); :class:`NotReplayable` if it cannot."""
    if item.gateway_id == UNKNOWN_GATEWAY:
        raise NotReplayable("its topic named no gateway: nothing to replay it on")
    raw = stored_bytes(item.payload_b64)
    if raw is None or item.payload_bytes is None:
        raise NotReplayable("it stores no payload")
    if item.payload_truncated:
        raise NotReplayable(
            f"payload_truncated: {item.payload_bytes} bytes, only the first {len(raw)} are stored"
        )
    if item.indexes is not None:  # a message's refused readings: the JSON array of them
        try:
            readings = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NotReplayable(f"the stored readings are not JSON: {exc}") from exc
        if not isinstance(readings, list) or not readings:
            raise NotReplayable("the stored readings are not a JSON array")
        return _batch_of(item, raw)
    if item.index is None:
        return raw
    try:
        reading = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotReplayable(f"the stored reading is not JSON: {exc}") from exc
    if not isinstance(reading, dict):
        raise NotReplayable("the stored reading is not a JSON object")
    return _batch_of(item, b"[" + raw + b"]")


def _batch_of(item: DeadLetter, readings: bytes) -> bytes:
    """A ReadingBatch of ``item``'s gateway around ``readings`` (a JSON array as stored)."""
    # The reading's bytes as they were sent (numbers are not parsed and printed again).
    epoch = b"" if item.epoch is None else b',"epoch":' + orjson.dumps(item.epoch)
    return b"".join(
        (
            b'{"schema":',
            orjson.dumps(SCHEMA_ID),
            b',"gateway_id":',
            orjson.dumps(item.gateway_id),
            epoch,
            b',"readings":',
            readings,
            b"}",
        )
    )


class ReplayFilter(BaseModel):
    """Which dead letters a replay takes (newest first, up to ``limit``)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, pattern=REASON_PATTERN)
    gateway_id: str | None = Field(default=None, pattern=ID_PATTERN)
    start: str | None = Field(default=None, description="as for GET; default 30 days back")
    end: str | None = Field(default=None, description="as for GET; default now")
    exclude_stored: bool = Field(
        default=True,
        description="skip the ones a replay has already stored (replay_outcome `stored`), so "
        "sending the same filter again takes the next ones",
    )

    @model_validator(mode="after")
    def _narrow(self) -> Self:
        if self.reason is None and self.gateway_id is None:
            raise ValueError("a filter needs reason or gateway_id (or both)")
        return self


class ReplayRequest(BaseModel):
    """``{"ids": [...]}`` or ``{"filter": {...}, "limit": N}``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"ids": ["MTc2NDk0MDcwMDAwMDAwMDAwMC5jaGFyZ2VyX25vdF9ib3VuZC5ndy0x"]},
                {"filter": {"reason": "charger_not_bound", "gateway_id": "gw-1"}, "limit": 100},
            ]
        },
    )

    ids: list[str] | None = Field(default=None, min_length=1, max_length=REPLAY_MAX)
    filter: ReplayFilter | None = None
    limit: int = Field(default=REPLAY_MAX, ge=1, le=REPLAY_MAX)

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        if self.ids is not None:
            self.ids = list(dict.fromkeys(self.ids))
        return self


class Refused(BaseModel):
    id: str
    reason: str


class ReplayAnswer(BaseModel):
    accepted: list[str] = Field(description="published with replay-of; see each replay_outcome")
    refused: list[Refused]
    requested_at: str = Field(description="when the API took the request (its own clock)")
    more: bool = Field(
        default=False,
        description="by filter: more dead letters matched than this request took (at most "
        "`limit`); send the filter again for the next ones (the stored ones are skipped)",
    )
    previous_replayed_at: dict[str, str | None] = Field(
        default_factory=dict,
        description="each accepted id's replayed_at before this replay: its replay is done once "
        "its replayed_at differs (no comparison across hosts' clocks)",
    )


class ReplayPublisher(Protocol):
    """What a replay needs of the broker link (query_api.broker.BrokerLink)."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, topic: str, payload: bytes, *, user_properties: tuple[tuple[str, str], ...] = ()
    ) -> None: ...
