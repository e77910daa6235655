"""``POST /v1/telemetry`` (role ``ingest``): readings over HTTP into the same MQTT pipeline, and
``GET /telemetry/{chargerId}``, the latest-reading alias of the older serverless API (``read``).

A request is all or nothing: if any reading is invalid the answer is 422 listing every invalid
reading (``errors[].index``) and nothing is published. Valid readings are numbered (see
:mod:`query_api.seqs`) and published with QoS 1 to ``{root}/{gateway}/readings`` under the
caller's gateway id (a PUBACK 0x10, no bridge subscribed, is a failure as at the edge). The
answer 200 comes only once the bridges acknowledged every seq as handled: stored in InfluxDB, or
dead-lettered, e.g. a charger bound to another gateway (:mod:`query_api.acks`); without that
acknowledgement within ``INGEST_STORED_TIMEOUT_S`` it is 503 with ``Retry-After``. An
``Idempotency-Key`` makes a retry reuse the seqs of the first attempt
(:mod:`query_api.idempotency`).

200 rather than 202: the request is complete when answered (202 says "accepted, processing not
complete", which is what the answer meant while it came after the broker's PUBACK); not 201, as
no resource is created that a Location could name.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from query_api.acks import StoredAcks, Waiter
from query_api.auth import Principal, require
from query_api.broker import Publisher
from query_api.deps import Broker, Mono, Now, Settings, influx_of
from query_api.handled import handled
from query_api.idempotency import IdempotencyKeys, KeyEntry, digest, parse_key
from query_api.ingest import numbered, parse_body, payloads
from query_api.params import ChargerId
from query_api.problems import ProblemError, problem_responses, read_body
from query_api.routes.chargers import latest_of
from query_api.seqs import SeqAllocator
from telemetry_common.mqtt import MqttError, PublishLostError
from telemetry_common.schema import MAX_BATCH_BYTES, Reading, encode_batch, format_ts

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
    accepted: int = Field(description="readings handled: stored, or dead-lettered by the bridge")
    first_seq: int
    last_seq: int
    stored: int | None = Field(
        description="of them, how many InfluxDB holds with their seq right after the bridges' "
        "acknowledgement (null: InfluxDB did not answer)"
    )
    not_stored: list[int] | None = Field(
        description="the indices of the others: dead-lettered (the dead-letter feed says why), "
        "or replaced by a later reading of the same charger, connector and ts (null: not known)"
    )
    readings: list[AcceptedReading]


class CompatReading(BaseModel):
    chargerId: str  # the older API's field names
    timestamp: str
    payload: dict[str, float | str] = Field(description="values, and status when known")


async def _accepted(request: Request, gateway_id: str, readings: list[Reading]) -> Accepted:
    checked = await handled(influx_of(request), gateway_id, readings)
    return Accepted(
        gateway_id=gateway_id,
        accepted=len(readings),
        first_seq=readings[0].seq,
        last_seq=readings[-1].seq,
        stored=checked.stored,
        not_stored=checked.not_stored,
        readings=[
            AcceptedReading(index=i, charger_id=r.charger_id, ts=format_ts(r.ts), seq=r.seq)
            for i, r in enumerate(readings)
        ],
    )


def _unavailable(slug: str, detail: str, retry_after_s: int) -> ProblemError:
    return ProblemError(503, slug, detail, headers={"Retry-After": str(retry_after_s)})


@router.post(
    "/v1/telemetry",
    status_code=200,
    summary="Ingest one reading or a batch; answered once stored (role ingest)",
    responses=problem_responses(401, 403, 409, 413, 422, 503),
    # The body is read and bounded by hand (256 KiB), so it is documented here.
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "8 to 128 characters of A-Z a-z 0-9 . _ ~ : + / = - (a UUID): a "
                "retry with the same key and readings reuses the seqs of the first attempt, or "
                "gets its answer again once it succeeded",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~:+/=-]{8,128}$"},
            }
        ],
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
        },
    },
)
async def ingest(
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require("ingest"))],
    broker: Broker,
    settings: Settings,
    now: Now,
) -> Accepted:
    gateway_id = principal.gateway_id
    assert gateway_id is not None  # keys that may ingest are bound to a gateway
    try:
        key = parse_key(request.headers.get("idempotency-key"))
    except ValueError as exc:
        raise ProblemError(
            422,
            "invalid-request",
            str(exc),
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "value_error"}],
        ) from exc
    parsed = parse_body(
        await read_body(request, MAX_BATCH_BYTES),
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
    retry_s = settings.ingest_retry_after_s
    if broker is None or not broker.connected:
        raise _unavailable(
            "broker-unavailable", "the broker is not reachable; retry later", retry_s
        )
    seqs: SeqAllocator = request.app.state.seqs
    keys: IdempotencyKeys = request.app.state.idempotency
    acks: StoredAcks = request.app.state.acks
    count = len(parsed.readings)
    entry: KeyEntry | None = None
    waiter: Waiter | None = None
    try:
        async with seqs.lock(gateway_id):
            fresh = True
            if key is None:
                first = await seqs.reserve(gateway_id, count)
            else:
                body_digest = digest(encode_batch(gateway_id, parsed.readings))
                entry = keys.get(gateway_id, key)
                if entry is None:
                    first = await seqs.reserve(gateway_id, count)
                    entry = await keys.add(gateway_id, key, body_digest, first, count)
                else:
                    entry = _reuse(entry, body_digest, retry_s)
                    first, fresh = entry.first_seq, False
            readings = numbered(parsed.readings, first)
            if entry is not None and entry.done:
                # Answered 200 before: the same answer, nothing published (the key is held
                # until this answer is made, so a concurrent one is 409, as while it ran).
                response.headers["Idempotent-Replayed"] = "true"
            else:
                waiter = acks.expect(gateway_id, first, first + count - 1)
                try:
                    topic = settings.topics.readings(gateway_id)
                    await _publish(broker, topic, gateway_id, readings, acks.epoch)
                except _NotPublished as exc:
                    nothing = exc.sent + exc.maybe == 0
                    if fresh and (key is None or nothing):
                        # Without a key the client's retry takes new seqs anyway; with one, its
                        # retry reuses them all, so they go back only if nothing was published.
                        await seqs.release(gateway_id, first + exc.sent + exc.maybe, first + count)
                        if entry is not None:
                            await keys.drop(entry)
                            entry = None
                    raise _unavailable("broker-unavailable", exc.detail, retry_s) from exc.cause
        if waiter is not None and not await acks.wait(waiter, settings.ingest_stored_timeout_s):
            raise _unavailable(
                "not-stored",
                f"published, but not acknowledged as stored within "
                f"{settings.ingest_stored_timeout_s:g}s (is a bridge running?); the readings may "
                "still be stored: retry"
                + (" with the same Idempotency-Key" if key is not None else ""),
                retry_s,
            )
        answer = await _accepted(request, gateway_id, readings)
        if entry is not None:
            await keys.complete(entry)
    finally:
        if waiter is not None:
            acks.forget(waiter)
        if entry is not None:
            entry.busy = False
    if waiter is not None:
        request.app.state.metrics.ingested.inc(count)
    return answer


def _reuse(entry: KeyEntry, body_digest: str, retry_s: int) -> KeyEntry:
    """``entry`` taken by this request, or the problem why it may not be."""
    if entry.digest != body_digest:
        raise ProblemError(
            422,
            "idempotency-key-mismatch",
            "this Idempotency-Key was used with other readings; use a new key for new readings",
        )
    if entry.busy:
        raise ProblemError(
            409,
            "idempotency-key-in-use",
            "a request with this Idempotency-Key is still being processed; retry later",
            headers={"Retry-After": str(retry_s)},
        )
    entry.busy = True
    return entry


class _NotPublished(Exception):
    def __init__(self, sent: int, maybe: int, detail: str, cause: MqttError) -> None:
        super().__init__(detail)
        self.sent = sent  # readings the broker certainly took
        self.maybe = maybe  # readings it may have taken (connection lost before the PUBACK)
        self.detail = detail
        self.cause = cause


async def _publish(
    broker: Publisher, topic: str, gateway_id: str, readings: list[Reading], epoch: str
) -> None:
    sent = 0
    for chunk, payload in payloads(gateway_id, readings, epoch):
        try:
            await broker.publish(topic, payload)
        except MqttError as exc:
            maybe = len(chunk) if isinstance(exc, PublishLostError) else 0
            log.warning("ingest publish failed after %d readings: %s", sent, exc)
            detail = (
                f"the broker did not take the readings ({sent} of {len(readings)} were "
                f"published): {exc}; retry the request (a replay overwrites itself)"
            )
            raise _NotPublished(sent, maybe, detail, exc) from exc
        sent += len(chunk)


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
