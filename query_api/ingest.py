"""HTTP ingest bodies -> validated readings, and readings -> MQTT payloads (pure).

Accepted bodies (JSON):

- a ReadingBatch of docs/design.md: ``{"schema"?, "gateway_id"?, "readings": [...]}`` (a given
  ``gateway_id`` must be the caller's);
- a single reading of that schema: ``{"charger_id", "ts", "values", ...}``;
- the simple shape of the older serverless API: ``{"chargerId", "timestamp", "payload"}``, whose
  ``payload`` holds value keys with numbers and optionally ``status``;
- a JSON array of readings in either of the two reading shapes.

Every reading is validated with the shared schema (``seq`` is assigned later, see
:mod:`query_api.seqs`); a ``ts`` more than ``max_future`` ahead is refused as the bridge would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from pydantic import ValidationError

from telemetry_common.schema import (
    MAX_BATCH_BYTES,
    MAX_BATCH_READINGS,
    SCHEMA_ID,
    Reading,
    encode_batch,
)

SIMPLE_KEYS: Final = frozenset({"chargerId", "timestamp", "payload"})


@dataclass(slots=True)
class Parsed:
    readings: list[Reading] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _error(index: int | None, loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"index": index, "loc": loc, "msg": msg, "type": kind}


def _from_simple(item: dict[str, Any]) -> dict[str, Any]:
    """The simple shape as a schema reading; its problems surface in validation."""
    extra = sorted(set(item) - SIMPLE_KEYS)
    if extra:
        raise ValueError(f"unknown keys {extra} (simple shape: chargerId, timestamp, payload)")
    payload = item.get("payload")
    if not isinstance(payload, dict):
        raise ValueError("payload must be an object of value keys to numbers")  # noqa: TRY004
    values = {k: v for k, v in payload.items() if k != "status"}
    out: dict[str, Any] = {
        "charger_id": item.get("chargerId"),
        "ts": item.get("timestamp"),
        "values": values,
    }
    if "status" in payload:
        out["status"] = payload["status"]
    return out


def _items(body: Any, gateway_id: str) -> tuple[list[Any], list[dict[str, Any]]]:
    if isinstance(body, list):
        return body, []
    if not isinstance(body, dict):
        return [], [_error(None, ["body"], "expected a JSON object or array", "invalid_body")]
    if "readings" not in body:
        return [body], []
    errors = []
    extra = sorted(set(body) - {"schema", "gateway_id", "readings"})
    if extra:
        errors.append(_error(None, ["body"], f"unknown keys {extra}", "invalid_envelope"))
    if body.get("schema", SCHEMA_ID) != SCHEMA_ID:
        errors.append(_error(None, ["body", "schema"], f"must be {SCHEMA_ID!r}", "invalid_schema"))
    if body.get("gateway_id", gateway_id) != gateway_id:
        msg = f"this key publishes as gateway {gateway_id!r} only"
        errors.append(_error(None, ["body", "gateway_id"], msg, "gateway_mismatch"))
    readings = body["readings"]
    if not isinstance(readings, list):
        errors.append(_error(None, ["body", "readings"], "must be an array", "invalid_envelope"))
        readings = []
    return readings, errors


def parse_body(raw: bytes, gateway_id: str, *, now: datetime, max_future: timedelta) -> Parsed:
    """Every reading of ``raw`` validated; all errors collected, each with its reading's index."""
    out = Parsed()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        out.errors.append(_error(None, ["body"], f"invalid JSON: {exc}", "invalid_json"))
        return out
    items, out.errors = _items(body, gateway_id)
    if not items and not out.errors:
        out.errors.append(_error(None, ["body"], "no readings", "empty"))
    if len(items) > MAX_BATCH_READINGS:
        msg = f"{len(items)} readings; at most {MAX_BATCH_READINGS} per request"
        out.errors.append(_error(None, ["body"], msg, "too_many_readings"))
        return out
    latest_ok = now + max_future
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            out.errors.append(_error(i, [i], "expected an object", "invalid_reading"))
            continue
        try:
            data = _from_simple(item) if "chargerId" in item else dict(item)
        except ValueError as exc:
            out.errors.append(_error(i, [i], str(exc), "invalid_reading"))
            continue
        data["seq"] = 0  # numbered by the API when published
        try:
            reading = Reading.model_validate_json(orjson.dumps(data))
        except (ValidationError, TypeError) as exc:
            details = exc.errors() if isinstance(exc, ValidationError) else []
            if not details:
                out.errors.append(_error(i, [i], str(exc), "invalid_reading"))
            for e in details:
                loc = [i, *e.get("loc", ())]
                out.errors.append(_error(i, loc, str(e.get("msg", "")), str(e.get("type"))))
            continue
        if reading.ts > latest_ok:
            msg = f"ts is more than {max_future.total_seconds():.0f}s in the future"
            out.errors.append(_error(i, [i, "ts"], msg, "ts_in_future"))
            continue
        out.readings.append(reading)
    return out


def numbered(readings: list[Reading], first_seq: int) -> list[Reading]:
    return [r.model_copy(update={"seq": first_seq + i}) for i, r in enumerate(readings)]


def payloads(
    gateway_id: str, readings: list[Reading], epoch: str | None = None
) -> list[tuple[list[Reading], bytes]]:
    """``readings`` as ReadingBatch payloads of at most MAX_BATCH_BYTES each, in order."""
    payload = encode_batch(gateway_id, readings, epoch)
    if len(payload) <= MAX_BATCH_BYTES or len(readings) == 1:
        return [(readings, payload)]
    half = len(readings) // 2
    return payloads(gateway_id, readings[:half], epoch) + payloads(
        gateway_id, readings[half:], epoch
    )
