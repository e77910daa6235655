"""``POST /v1/telemetry`` (role ``ingest``): readings over HTTP into the same MQTT pipeline, and
``GET /telemetry/{chargerId}``, the latest-reading alias of the older serverless API (``read``).

A request is all or nothing: if any reading is invalid the answer is 422 listing every invalid
reading (``errors[].index``) and nothing is published. Valid readings are numbered (see
:mod:`query_api.seqs`), published with QoS 1 to ``{root}/{gateway}/readings`` under the
caller's gateway id, and the answer 202 comes after the broker's PUBACK; the bridge then stores
them (or dead-letters them, e.g. a charger bound to another gateway).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from query_api.auth import Principal, require
from query_api.deps import Broker, Mono, Now, Settings
from query_api.ingest import numbered, parse_body, payloads
from query_api.params import ChargerId
from query_api.problems import ProblemError, problem_responses
from query_api.routes.chargers import latest_of
from query_api.seqs import SeqAllocator
from telemetry_common.mqtt import MqttError, PublishLostError
from telemetry_common.schema import MAX_BATCH_BYTES, format_ts

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])

_EXAMPLES: dict[str, Any] = {
    "batch": {
        "summary": "A ReadingBatch (docs/design.md); seq is assigned by the API",
        "value": {
            "schema": "charger-telemetry/1",
            "readings": [
                {
                    "charger_id": "CP-0042",
                    "evse_id": 1,
                    "connector_id": 1,
                    "ts": "2026-05-01T12:00:00.000Z",
                    "status": "Charging",
                    "values": {"energy_wh": 12345.6, "power_w": 7200.0},
                }
            ],
        },
    },
    "single": {
        "summary": "One reading",
        "value": {"charger_id": "CP-0042", "ts": "2026-05-01T12:00:00Z", "values": {"power_w": 1}},
    },
    "simple": {
        "summary": "The simple shape of the older serverless API",
        "value": {
            "chargerId": "CP-0042",
            "timestamp": "2026-05-01T12:00:00Z",
            "payload": {"power_w": 7200.0, "status": "Charging"},
        },
    },
}


class AcceptedReading(BaseModel):
    index: int
    charger_id: str
    ts: str
    seq: int


class Accepted(BaseModel):
    gateway_id: str
    accepted: int
    first_seq: int
    last_seq: int
    readings: list[AcceptedReading]


class CompatReading(BaseModel):
    chargerId: str  # the older API's field names
    timestamp: str
    payload: dict[str, float | str] = Field(description="values, and status when known")


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
        raise ProblemError(413, "too-large", f"the body exceeds {MAX_BATCH_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BATCH_BYTES:
            raise ProblemError(413, "too-large", f"the body exceeds {MAX_BATCH_BYTES} bytes")
    return bytes(raw)


@router.post(
    "/v1/telemetry",
    status_code=202,
    summary="Ingest one reading or a batch into the MQTT pipeline (role ingest)",
    responses=problem_responses(401, 403, 413, 422, 503),
    # The body is read and bounded by hand (256 KiB), so it is documented here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "object", "description": "a batch, a reading or simple"},
                            {"type": "array", "items": {"type": "object"}},
                        ]
                    },
                    "examples": _EXAMPLES,
                }
            },
        }
    },
)
async def ingest(
    request: Request,
    principal: Annotated[Principal, Depends(require("ingest"))],
    broker: Broker,
    settings: Settings,
    now: Now,
) -> Accepted:
    gateway_id = principal.gateway_id
    assert gateway_id is not None  # keys that may ingest are bound to a gateway
    parsed = parse_body(
        await _body(request),
        gateway_id,
        now=now,
        max_future=timedelta(seconds=settings.ingest_max_future_s),
    )
    if parsed.errors:
        invalid = len({e["index"] for e in parsed.errors})
        raise ProblemError(
            422,
            "invalid-readings",
            f"{invalid} invalid; nothing was published",
            errors=parsed.errors,
        )
    if broker is None or not broker.connected:
        raise ProblemError(503, "broker-unavailable", "the broker is not reachable; retry later")
    seqs: SeqAllocator = request.app.state.seqs
    topic = settings.topics.readings(gateway_id)
    async with seqs.lock(gateway_id):
        first = await seqs.reserve(gateway_id, len(parsed.readings))
        readings = numbered(parsed.readings, first)
        sent = 0
        for chunk, payload in payloads(gateway_id, readings):
            try:
                await broker.publish(topic, payload)
            except MqttError as exc:
                maybe = len(chunk) if isinstance(exc, PublishLostError) else 0
                await seqs.release(gateway_id, first + sent + maybe)
                log.warning("ingest publish failed after %d readings: %s", sent, exc)
                raise ProblemError(
                    503,
                    "broker-unavailable",
                    f"the broker did not take the readings ({sent} of {len(readings)} were "
                    "published); retry the request (a replay overwrites itself)",
                ) from exc
            sent += len(chunk)
    request.app.state.metrics.ingested.inc(len(readings))
    return Accepted(
        gateway_id=gateway_id,
        accepted=len(readings),
        first_seq=first,
        last_seq=first + len(readings) - 1,
        readings=[
            AcceptedReading(index=i, charger_id=r.charger_id, ts=format_ts(r.ts), seq=r.seq)
            for i, r in enumerate(readings)
        ],
    )


@router.get(
    "/telemetry/{charger_id}",
    summary="Latest reading in the older serverless API's shape (role read)",
    responses=problem_responses(401, 403, 404, 422, 503),
    dependencies=[Depends(require("read"))],
)
async def compat_latest(
    request: Request, charger_id: ChargerId, now: Now, mono: Mono
) -> CompatReading:
    latest = await latest_of(request, charger_id, now=now, mono=mono)
    payload: dict[str, float | str] = dict(latest["values"])
    if latest["status"] is not None:
        payload["status"] = latest["status"]
    return CompatReading(chargerId=latest["charger_id"], timestamp=latest["ts"], payload=payload)
