"""The ReadingBatch payload (docs/design.md), strict: what the edge sends, the processor accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import SchemaValidator, core_schema

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
#: The statuses of a connector inside a transaction: OCPP 1.6's StatusNotification carries no
#: transactionId, so a reading of one of these without a transaction does not end a session
#: (docs/design.md#sessions, ``end_cause`` ``next``).
IN_TRANSACTION: Final = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})
#: The highest seq the cloud accepts (``seq_out_of_range`` above it) and the edge assigns:
#: beyond 2^53-1 a seq is no longer exact as a JSON number read into a double.
MAX_SEQ: Final = 2**53 - 1
#: A transaction's start or end, as the charger reported it (OCPP StartTransaction /
#: StopTransaction, TransactionEvent Started / Ended); the reading carries the meter register
#: then (``energy_wh``: meterStart / meterStop).
TxEvent = Literal["started", "ended"]
#: A salted hash of an OCPP idTag (HMAC-SHA256 with the deployment's salt, first 128 bits in
#: hex): the same tag gives the same hash fleet-wide, and the tag itself never leaves the gateway.
ID_TAG_HASH_SHAPE: Final = r"^[0-9a-f]{32}$"
#: What a charger says about itself (printable ASCII; OCPP's CiString fields are shorter).
InfoText = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")]
#: An outbox epoch: 64 random bits in lowercase hex.
EPOCH_SHAPE: Final = r"^[0-9a-f]{16}$"
#: What a value key looks like; a key must also not be one of RESERVED_VALUE_KEYS.
VALUE_KEY_SHAPE: Final = r"^[a-z][a-z0-9_]{0,62}$"


def _excluding(words: frozenset[str], *, first: str, rest: str, max_len: int) -> str:
    """A regex (no lookaround: pydantic-core's Rust engine has none) for the strings of
    ``[first][rest]{0,max_len-1}`` except ``words``, built from the words' trie: at each prefix
    of a word, either stop (unless the prefix is a word), or leave the trie with a character
    no word continues with, or follow a word."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def cls(chars: set[str]) -> str:
        codes = sorted(ord(c) for c in chars)
        runs: list[list[int]] = []
        for c in codes:
            if runs and c == runs[-1][1] + 1:
                runs[-1][1] = c
            else:
                runs.append([c, c])
        return "[" + "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in runs) + "]"

    def walk(node: dict[str, Any], depth: int) -> str:
        options = [] if depth == 0 or "" in node else [""]
        left = max_len - depth - 1
        other = set(first if depth == 0 else rest) - set(node)
        if other and left >= 0:
            options.append(cls(other) + (f"{cls(set(rest))}{{0,{left}}}" if left else ""))
        for ch in sorted(k for k in node if k):
            if depth < max_len:
                options.append(ch + walk(node[ch], depth + 1))
        alternatives = "|".join(o for o in options if o)
        return f"(?:{alternatives})" + ("?" if "" in options else "")

    return "^" + walk(trie, 0) + "$"


_LOWER: Final = "abcdefghijklmnopqrstuvwxyz"
VALUE_KEY_PATTERN: Final = _excluding(
    RESERVED_VALUE_KEYS, first=_LOWER, rest=_LOWER + "0123456789_", max_len=63
)


class _ValueKeyRule:
    """A value key, checked inside pydantic-core (a Python validator per reading cost the
    bridge ~10% of its CPU), with a readable error instead of the generated pattern."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.custom_error_schema(
            core_schema.str_schema(pattern=VALUE_KEY_PATTERN),
            custom_error_type="value_key",
            custom_error_message=(
                f"a value key matches {VALUE_KEY_SHAPE} and is none of "
                f"{', '.join(sorted(RESERVED_VALUE_KEYS))}"
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        reserved = ", ".join(sorted(RESERVED_VALUE_KEYS))
        return {
            "type": "string",
            "pattern": VALUE_KEY_SHAPE,
            "description": f"a value key with its unit as suffix; not {reserved}",
        }


ValueKey = Annotated[str, _ValueKeyRule()]
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


class ChargerInfo(BaseModel):
    """A charger's identity as it reported it (OCPP BootNotification), on the reading taken then."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    vendor: InfoText | None = None
    model: InfoText | None = None
    serial: InfoText | None = None
    firmware: InfoText | None = None


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
    #: With ``transaction_id``: this reading is the transaction's start or end.
    tx_event: TxEvent | None = None
    #: With ``tx_event`` "ended": why (OCPP's reason, e.g. ``EVDisconnected``, ``Local``).
    stop_reason: Id | None = None
    id_tag_hash: Annotated[str, Field(pattern=ID_TAG_HASH_SHAPE)] | None = None
    charger_info: ChargerInfo | None = None
    values: dict[ValueKey, Value] = Field(max_length=MAX_VALUE_KEYS)


class ReadingBatch(BaseModel):
    """What a gateway publishes on ``{root}/{gateway_id}/readings``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    schema_: Literal["charger-telemetry/1"] = Field(alias="schema", default=SCHEMA_ID)
    gateway_id: Id
    #: The outbox's identity (:data:`EPOCH_SHAPE`): ``seq`` is unique and increasing per
    #: (gateway, epoch); a new outbox (deleted, re-created) has a new epoch and starts at 1.
    epoch: Annotated[str, Field(pattern=EPOCH_SHAPE)] | None = None
    readings: list[Reading] = Field(min_length=1, max_length=MAX_BATCH_READINGS)


def _as_rows(schema: Any) -> Any:
    """``schema`` (a pydantic-core schema) with every model turned into a typed dict of the same
    fields, aliases and rules: the same validation, without building model instances."""
    if isinstance(schema, list):
        return [_as_rows(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "model":
        config = schema.get("config", {})
        fields = schema["schema"]["fields"]
        return core_schema.typed_dict_schema(
            {
                name: core_schema.typed_dict_field(
                    _as_rows(f["schema"]),
                    required=f["schema"]["type"] != "default",
                    validation_alias=f.get("validation_alias"),
                )
                for name, f in fields.items()
            },
            strict=config.get("strict"),
            extra_behavior=config.get("extra_fields_behavior"),
            config=config,  # strictness etc. of the fields inside, as for the model
        )
    return {k: v if k == "metadata" else _as_rows(v) for k, v in schema.items()}


#: A reading validated by :class:`Reading`'s own rules into a plain dict (every field present,
#: defaults filled), for the processor's hot path: it needs no model instance per reading.
ReadingRow = dict[str, Any]
ROWS_VALIDATOR: Final = SchemaValidator(_as_rows(ReadingBatch.__pydantic_core_schema__))
READING_ROW_VALIDATOR: Final = SchemaValidator(_as_rows(Reading.__pydantic_core_schema__))


#: The reading keys that say something about a transaction: they need its ``transaction_id``.
TX_KEYS: Final = ("tx_event", "stop_reason", "id_tag_hash")


def orphan_tx_keys(reading: ReadingRow) -> list[str]:
    """The transaction keys ``reading`` gives without a ``transaction_id`` (a reading that has
    any is refused, by the edge and by the bridge: it would not say which transaction it
    starts or ends). A rule across keys, so checked here rather than in the schema (the
    processor's fast validator reads the fields' rules only)."""
    if reading["transaction_id"] is not None:
        return []
    return [key for key in TX_KEYS if reading[key] is not None]


def format_ts(ts: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, the form every payload uses."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row_to_dict(row: ReadingRow) -> dict[str, object]:
    """A reading's JSON form (docs/design.md): fields that are None left out, ts in UTC."""
    out = {k: v for k, v in row.items() if v is not None}
    if "charger_info" in out:
        out["charger_info"] = {k: v for k, v in out["charger_info"].items() if v is not None}
    out["ts"] = format_ts(row["ts"])
    return out


def reading_to_dict(reading: Reading) -> dict[str, object]:
    """:func:`row_to_dict` of a :class:`Reading`."""
    return row_to_dict(reading.model_dump())


def encode_batch(gateway_id: str, readings: list[Reading], epoch: str | None = None) -> bytes:
    """Serialise a batch as the UTF-8 JSON payload of docs/design.md."""
    body: dict[str, Any] = {"schema": SCHEMA_ID, "gateway_id": gateway_id}
    if epoch is not None:
        body["epoch"] = epoch
    body["readings"] = [reading_to_dict(r) for r in readings]
    return orjson.dumps(body)
