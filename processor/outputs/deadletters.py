"""The dead-letter output: what cannot be stored as a reading is stored as a dead letter in
InfluxDB (measurement ``deadletters``: durable, so its seq can be acknowledged to the gateway as
handled), then published on ``{root}/deadletter/{gateway}`` with a machine-readable reason, and
the batch waits until the broker acknowledged it (guarantee 4: bad input never stalls the
pipeline, and is never dropped in silence).

One record per message (docs/design.md#dead-letters): a message refused whole is its own record;
the refused readings of a message are **one** record (:func:`bulk_of`) with their indexes, each
index's reason and (for the first :data:`MAX_FAULT_DETAILS`) its detail: a message of 1,000
invalid readings costs one stored point, one publish and at most one WARNING line, not 1,000.
WARNING lines are rate-limited per gateway and reason (:class:`~telemetry_common.logthrottle.
LogThrottle`), with the count of those left out."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from processor.metrics import Metrics
from processor.validate import Rejected
from telemetry_common.deadletters import DeadLetterKey
from telemetry_common.influx_write import field_str
from telemetry_common.logthrottle import LogThrottle
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)
from telemetry_common.storage import DEADLETTER_MEASUREMENT
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

#: Raw bytes kept in a dead letter: base64 of this stays well under the broker's packet limit
#: (mosquitto/README.md), so a dead letter about a huge payload can itself be delivered.
DEADLETTER_MAX_RAW: Final = 192 * 1024
#: ... and in the stored one, in fields of :data:`STORED_CHUNK` bytes each (``payload_b64``,
#: ``payload_b64_1``, ...: InfluxDB 1.x refuses string fields over 64 KiB): a whole message of
#: the largest size accepted (256 KiB) is stored whole.
STORED_CHUNK: Final = 32 * 1024
STORED_CHUNKS: Final = 8
STORED_MAX_RAW: Final = STORED_CHUNK * STORED_CHUNKS
STORED_MAX_DETAIL: Final = 2048
#: The readings of a bulk record whose detail is kept (all their indexes and reasons are).
MAX_FAULT_DETAILS: Final = 100
#: ... each cut at this many characters.
MAX_FAULT_DETAIL: Final = 200


def bulk_of(records: list[Rejected]) -> list[Rejected]:
    """One message's dead letters as they are stored: each one of a whole message as it is,
    and all its refused readings (``index`` set) as **one** record: reason the most frequent
    one among them (ties: the first in payload order), ``faults`` each one's index, reason and
    detail in payload order, ``raw`` the JSON array of those readings as sent, ``epoch`` the
    message's."""
    whole = [r for r in records if r.index is None and not r.faults]
    readings = sorted((r for r in records if r.index is not None), key=lambda r: r.index or 0)
    if not readings:
        return whole
    counts = Counter(r.reason for r in readings)
    reason = max(counts, key=lambda c: counts[c])  # first seen wins a tie (Counter keeps order)
    first = next(r for r in readings if r.reason == reason)
    summary = ", ".join(f"{c} {n}" for c, n in counts.most_common())
    detail = f"{len(readings)} readings refused ({summary}); #{first.index}: {first.detail}"
    faults = tuple((r.index or 0, r.reason, r.detail) for r in readings)
    raw = b"[" + b",".join(r.raw for r in readings) + b"]"
    epoch = next((r.epoch for r in readings if r.epoch is not None), None)
    return [*whole, Rejected(reason, detail, raw, None, epoch, faults)]


def fault_summary(record: Rejected) -> dict[str, Any]:
    """A bulk record's readings as the record and the stored point say them (bounded: every
    index and reason count, the detail of the first :data:`MAX_FAULT_DETAILS` only)."""
    return {
        "count": len(record.faults),
        "indexes": [i for i, _, _ in record.faults],
        "reasons": dict(Counter(reason for _, reason, _ in record.faults).most_common()),
        "faults": [
            {"index": i, "reason": reason, "detail": detail[:MAX_FAULT_DETAIL]}
            for i, reason, detail in record.faults[:MAX_FAULT_DETAILS]
        ],
    }


def _chunks(raw: bytes) -> Iterable[tuple[str, bytes]]:
    for n, at in enumerate(range(0, min(len(raw), STORED_MAX_RAW), STORED_CHUNK)):
        yield ("payload_b64" if n == 0 else f"payload_b64_{n}"), raw[at : at + STORED_CHUNK]


def deadletter_lines(dead: list[tuple[str, str, Rejected]], now_ns: int) -> list[str]:
    """Line protocol for the dead letters of a batch (``(gateway, topic, record)``), stamped
    ``now_ns`` plus their position so each is its own point."""
    lines = []
    for k, (gateway_id, topic, record) in enumerate(dead):
        fields = [
            f"detail={field_str(record.detail[:STORED_MAX_DETAIL])}",
            f"topic={field_str(topic[:512])}",
            f"payload_bytes={len(record.raw)}i",
        ]
        fields += [f"{k}={field_str(base64.b64encode(c).decode())}" for k, c in _chunks(record.raw)]
        if record.index is not None:
            fields.append(f"index={record.index}i")
        if record.faults:
            summary = fault_summary(record)
            fields.append(f"count={summary['count']}i")
            fields += [
                f"{k}={field_str(orjson.dumps(summary[k]).decode())}"
                for k in ("indexes", "reasons", "faults")
            ]
        if record.epoch is not None:
            fields.append(f"epoch={field_str(record.epoch)}")
        lines.append(
            f"{DEADLETTER_MEASUREMENT},gateway_id={gateway_id},reason={record.reason} "
            f"{','.join(fields)} {now_ns + k}"
        )
    return lines


def replay_outcome_lines(outcomes: list[tuple[DeadLetterKey, str]], at: datetime) -> list[str]:
    """Line protocol that writes ``replayed_at`` (``at``) and ``replay_outcome`` onto each
    replayed dead letter's own point (same measurement, tags and time: InfluxDB merges the
    fields into it; a later replay overwrites them)."""
    stamp = field_str(at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return [
        f"{DEADLETTER_MEASUREMENT},gateway_id={key.gateway_id},reason={key.reason} "
        f"replayed_at={stamp},replay_outcome={field_str(outcome)} {key.ns}"
        for key, outcome in outcomes
    ]


def deadletter_record(gateway_id: str, topic: str, record: Rejected, now: datetime) -> bytes:
    """The dead-letter document (docs/design.md) for ``record``, received on ``topic``."""
    doc: dict[str, Any] = {
        "reason": record.reason,
        "detail": record.detail,
        "topic": topic,
        "gateway_id": gateway_id,
        "index": record.index,
        "ts": now.isoformat(),
        "payload_bytes": len(record.raw),
        "payload_truncated": len(record.raw) > DEADLETTER_MAX_RAW,
        "payload_b64": base64.b64encode(record.raw[:DEADLETTER_MAX_RAW]).decode(),
    }
    if record.faults:
        doc.update(fault_summary(record))
        doc["epoch"] = record.epoch
    return orjson.dumps(doc)


class DeadLetters:
    def __init__(
        self,
        mqtt: AsyncMqttClient,
        topics: Topics,
        metrics: Metrics,
        max_backoff_s: float = 30.0,
        warn_interval_s: float = 60.0,
    ) -> None:
        """``warn_interval_s``: at most one WARNING line per gateway and reason this often."""
        self._mqtt = mqtt
        self._topics = topics
        self._metrics = metrics
        self._max_backoff_s = max_backoff_s
        self._warnings = LogThrottle(log, warn_interval_s)

    async def publish(self, gateway_id: str, topic: str, record: Rejected) -> None:
        """Publish one dead letter; return once the broker acknowledged it."""
        payload = deadletter_record(gateway_id, topic, record, datetime.now(UTC))
        self._warnings.warning(
            (gateway_id, record.reason),
            "dead-lettered from %s: %s (%s)",
            gateway_id,
            record.reason,
            record.detail[:200],
            extra={"gateway_id": gateway_id, "reason": record.reason},
        )
        await self._publish_until_acked(self._topics.deadletter(gateway_id), payload)
        if record.faults:
            for reason, n in Counter(reason for _, reason, _ in record.faults).items():
                self._metrics.dead_lettered.labels(reason).inc(n)
        else:
            self._metrics.dead_lettered.labels(record.reason).inc()

    async def _publish_until_acked(self, topic: str, payload: bytes) -> None:
        delay = 0.2
        while True:
            await self._mqtt.wait_connected()
            try:
                await self._mqtt.publish(topic, payload)
            except (PublishLostError, NotConnectedError) as exc:
                log.warning("publish to %s not acknowledged (%s); retrying", topic, exc)
            except PublishRejectedError:
                log.exception("broker refuses %s: check the bridge's ACL", topic)
            else:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff_s)
