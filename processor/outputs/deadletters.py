"""The dead-letter output: what cannot be stored as a reading is stored as a dead letter in
InfluxDB (measurement ``deadletters``: durable, so its seq can be acknowledged to the gateway as
handled), then published on ``{root}/deadletter/{gateway}`` with a machine-readable reason, and
the batch waits until the broker acknowledged it (guarantee 4: bad input never stalls the
pipeline, and is never dropped in silence)."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import UTC, datetime
from typing import Final

import orjson

from processor.metrics import Metrics
from processor.validate import Rejected
from telemetry_common.deadletters import DeadLetterKey
from telemetry_common.influx_write import field_str
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
#: ... and in the stored one: InfluxDB 1.x refuses string fields over 64 KiB.
STORED_MAX_RAW: Final = 32 * 1024
STORED_MAX_DETAIL: Final = 2048


def deadletter_lines(dead: list[tuple[str, str, Rejected]], now_ns: int) -> list[str]:
    """Line protocol for the dead letters of a batch (``(gateway, topic, record)``), stamped
    ``now_ns`` plus their position so each is its own point."""
    lines = []
    for k, (gateway_id, topic, record) in enumerate(dead):
        raw = record.raw[:STORED_MAX_RAW]
        fields = [
            f"detail={field_str(record.detail[:STORED_MAX_DETAIL])}",
            f"topic={field_str(topic[:512])}",
            f"payload_bytes={len(record.raw)}i",
            f"payload_b64={field_str(base64.b64encode(raw).decode())}",
        ]
        if record.index is not None:
            fields.append(f"index={record.index}i")
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
    return orjson.dumps(
        {
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
    )


class DeadLetters:
    def __init__(
        self, mqtt: AsyncMqttClient, topics: Topics, metrics: Metrics, max_backoff_s: float = 30.0
    ) -> None:
        self._mqtt = mqtt
        self._topics = topics
        self._metrics = metrics
        self._max_backoff_s = max_backoff_s

    async def publish(self, gateway_id: str, topic: str, record: Rejected) -> None:
        """Publish one dead letter; return once the broker acknowledged it."""
        payload = deadletter_record(gateway_id, topic, record, datetime.now(UTC))
        log.warning(
            "dead-lettered from %s: %s (%s)",
            gateway_id,
            record.reason,
            record.detail[:200],
            extra={"gateway_id": gateway_id, "reason": record.reason},
        )
        await self._publish_until_acked(self._topics.deadletter(gateway_id), payload)
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
