"""The processor's step over a batch of MQTT messages.

``process(messages)`` returns only when every reading in them is stored in InfluxDB or its
dead-letter record was acknowledged by the broker; the caller then acknowledges the messages
(guarantee 1). InfluxDB being unavailable makes it wait and retry (capped backoff), never drop.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import logging
import operator
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count, islice, repeat
from typing import Any

import orjson

from processor.gaps import GapTracker
from processor.lineproto import to_lines, value_fields_from_json
from processor.live import LiveFeed
from processor.lvc import Bindings, LastValueCache, Stamp
from processor.metrics import Metrics
from processor.validate import (
    BAD_TOPIC,
    CHARGER_NOT_BOUND,
    INFLUX_REJECTED,
    Rejected,
    decode_message,
    raw_readings,
)
from processor.writer import InfluxWriter, WriteRejectedError, WriteUnavailableError
from telemetry_common.errors import TopicError
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
    Received,
)
from telemetry_common.schema import READING_ROW_VALIDATOR, ReadingRow
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

UNKNOWN_GATEWAY = "_invalid"
#: Raw bytes kept in a dead letter: base64 of this stays well under the broker's packet limit
#: (mosquitto/README.md), so a dead letter about a huge payload can itself be delivered.
DEADLETTER_MAX_RAW = 192 * 1024


@dataclass(slots=True)
class Segment:
    """The lines of one message, ``lines[first : first + len(seqs)]`` of its batch."""

    msg_no: int
    gateway_id: str
    first: int
    #: Per line: the reading's position in the message's ``readings``, charger, seq and ts_ns.
    positions: list[int]
    chargers: list[str]
    seqs: list[int]
    nss: list[int]


@dataclass(slots=True)
class PreparedBatch:
    """A batch ready to commit, kept small while it waits: the readings are dropped once their
    lines are built, except each charger's newest (it may become the latest value)."""

    messages: int = 0
    lines: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    #: Per charger, its newest reading of the batch: (ts_ns, seq, gateway_id, reading, line).
    newest: dict[str, tuple[int, int, str, ReadingRow, int]] = field(default_factory=dict)
    #: (topic, payload) per message: a line InfluxDB refuses is dead-lettered with its reading.
    sources: list[tuple[str, bytes]] = field(default_factory=list)
    dead: list[tuple[str, str, Rejected]] = field(default_factory=list)  # gateway, topic, record
    #: Per gateway, the highest ts_ns and the highest seq among its readings so far.
    frontier: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Message number -> its readings as parsed JSON, filled only when some are looked up.
    parsed: dict[int, list[Any]] = field(default_factory=dict)

    def sent(self, k: int) -> tuple[Segment, int, bytes]:
        """Line ``k``'s segment, its reading's position in the message, and that reading as it
        was sent (for a dead letter or a second decoding; each message is parsed once)."""
        seg = self.segments[bisect.bisect_right(self.segments, k, key=lambda s: s.first) - 1]
        items = self.parsed.get(seg.msg_no)
        if items is None:
            items = self.parsed[seg.msg_no] = raw_readings(self.sources[seg.msg_no][1])
        index = seg.positions[k - seg.first]
        return seg, index, orjson.dumps(items[index])


class Processor:
    def __init__(
        self,
        writer: InfluxWriter,
        mqtt: AsyncMqttClient,
        topics: Topics,
        *,
        metrics: Metrics | None = None,
        bindings: Bindings | None = None,
        max_future: timedelta = timedelta(minutes=5),
        max_backoff_s: float = 30.0,
        live_interval_s: float = 1.0,
        live_max_rate: float = 0.0,
        live_busy_rate: float = 0.0,
        busy: Callable[[], bool] | None = None,
        max_lines_per_write: int = 10_000,
        write_concurrency: int = 2,
    ) -> None:
        self._writer = writer
        self._mqtt = mqtt
        self._topics = topics
        self._max_future = max_future
        self._max_backoff_s = max_backoff_s
        self._max_lines = max_lines_per_write
        self._write_slots = asyncio.Semaphore(write_concurrency)
        self.metrics = metrics if metrics is not None else Metrics()
        self.bindings = bindings if bindings is not None else Bindings()
        self.lvc = LastValueCache()
        self.gaps = GapTracker()
        self.live = LiveFeed(
            mqtt,
            topics,
            self.metrics,
            live_interval_s,
            live_max_rate,
            busy_rate=live_busy_rate,
            busy=busy,
        )

    async def process(self, messages: Sequence[Received]) -> None:
        """Decode, store and publish ``messages``; return when all of them may be acknowledged."""
        await self.commit(self.prepare(messages))

    def prepare(self, messages: Sequence[Received]) -> PreparedBatch:
        """The CPU half: decode, validate, check bindings and build lines (no I/O).

        Prepared batches may be committed in any order, and concurrently.
        """
        batch = PreparedBatch(messages=len(messages))
        self._decode(messages, batch)
        return batch

    async def prepare_async(
        self, messages: Sequence[Received], *, slice_bytes: int = 64 * 1024
    ) -> PreparedBatch:
        """:meth:`prepare`, handing the event loop back after every ``slice_bytes`` of payload:
        a write's answer, acknowledgements and live publishes are then handled within a few
        milliseconds instead of after the whole batch (up to ~100 ms at 2 MiB)."""
        out = PreparedBatch(messages=len(messages))
        start = 0
        while start < len(messages):
            end, size = start, 0
            while end < len(messages) and (end == start or size < slice_bytes):
                size += len(messages[end].payload)
                end += 1
            self._decode(messages[start:end], out)
            start = end
            if start < len(messages):
                await asyncio.sleep(0)
        return out

    async def commit(self, batch: PreparedBatch) -> None:
        """The I/O half: write, dead-letter, then update the cache, live feed and gap tracking."""
        lines = batch.lines
        refused_at: set[int] = set()
        if lines:
            # One request stays far below InfluxDB's body limit (25 MB by default in 1.x); a
            # write that large is dropped as a connection error and would be retried forever.
            # The requests of a batch are sent concurrently (InfluxDB ingests on several cores).
            chunks = -(-len(lines) // self._max_lines)
            size = -(-len(lines) // chunks)
            results = await asyncio.gather(
                *(self._write_in_slot(lines[i : i + size]) for i in range(0, len(lines), size))
            )
            refused = {line: err for result in results for line, err in result}
            if refused:
                # Only what InfluxDB holds may become the latest value or close a seq gap.
                refused_at = {k for k, line in enumerate(lines) if line in refused}
                for k in sorted(refused_at):
                    seg, index, raw = batch.sent(k)
                    rejected = Rejected(INFLUX_REJECTED, refused[lines[k]], raw, index)
                    batch.dead.append((seg.gateway_id, batch.sources[seg.msg_no][0], rejected))
            self.metrics.stored.inc(len(lines) - len(refused_at))
        for gateway_id, topic, record in batch.dead:
            await self._dead_letter(gateway_id, topic, record)
            self.metrics.dead_lettered.labels(record.reason).inc()
        self.metrics.messages.inc(batch.messages)
        now = time.monotonic()
        for seg in batch.segments:
            seqs, nss = seg.seqs, seg.nss
            if refused_at:
                stored = [j for j in range(len(seqs)) if seg.first + j not in refused_at]
                seqs, nss = [seqs[j] for j in stored], [nss[j] for j in stored]
            self.gaps.observe_all(seg.gateway_id, seqs, nss, now)
        newest = batch.newest
        if refused_at:
            newest = self._newest_stored(batch, refused_at)
        for charger_id, (ns, seq, gateway_id, row, _) in newest.items():
            if self.lvc.offer(charger_id, Stamp(ns, seq, gateway_id)):
                self.live.offer(gateway_id, row)
        self.metrics.lvc_chargers.set(len(self.lvc))

    @staticmethod
    def _newest_stored(
        batch: PreparedBatch, refused_at: set[int]
    ) -> dict[str, tuple[int, int, str, ReadingRow, int]]:
        """Each charger's newest reading of the batch among those InfluxDB stored (only what it
        holds may become the latest value). Rare: InfluxDB refused some lines. A charger whose
        newest line was refused gets its newest stored one, decoded again from its message."""
        newest = {c: v for c, v in batch.newest.items() if v[4] not in refused_at}
        lost = batch.newest.keys() - newest.keys()
        best: dict[str, tuple[int, int, int]] = {}  # charger -> (ns, seq, line)
        for seg in batch.segments:
            keys = zip(seg.chargers, seg.seqs, seg.nss, strict=True)
            for k, (charger_id, seq, ns) in enumerate(keys, seg.first):
                if charger_id in lost and k not in refused_at:
                    held = best.get(charger_id)
                    if held is None or held[:2] < (ns, seq):
                        best[charger_id] = (ns, seq, k)
        for charger_id, (ns, seq, k) in best.items():
            seg, _, raw = batch.sent(k)
            row = READING_ROW_VALIDATOR.validate_json(raw)
            newest[charger_id] = (ns, seq, seg.gateway_id, row, k)
        return newest

    def _decode(self, messages: Sequence[Received], out: PreparedBatch) -> None:
        """Decode ``messages`` into ``out`` (the hot loop: whole messages at a time, no
        per-point objects)."""
        now = datetime.now(UTC)
        lines = out.lines
        for msg in messages:
            msg_no = len(out.sources)
            out.sources.append((msg.topic, msg.payload))
            try:
                gateway_id = self._topics.gateway_of_readings(msg.topic)
            except (TopicError, ValueError) as exc:
                rejected = Rejected(BAD_TOPIC, str(exc), msg.payload)
                out.dead.append((UNKNOWN_GATEWAY, msg.topic, rejected))
                continue
            decoded = decode_message(gateway_id, msg.payload, now=now, max_future=self._max_future)
            out.dead.extend((gateway_id, msg.topic, r) for r in decoded.rejected)
            if not decoded.rows:
                continue
            chargers = [r["charger_id"] for r in decoded.rows]
            refused = self._unbound(gateway_id, chargers)
            if refused:
                items = raw_readings(msg.payload)
                for k, charger_id in enumerate(chargers):
                    if charger_id in refused:
                        i = decoded.positions[k]
                        rejected = Rejected(
                            CHARGER_NOT_BOUND, refused[charger_id], orjson.dumps(items[i]), i
                        )
                        out.dead.append((gateway_id, msg.topic, rejected))
                decoded.keep([k for k, c in enumerate(chargers) if c not in refused])
                if not decoded.rows:
                    continue
                chargers = [r["charger_id"] for r in decoded.rows]
            rows, nss = decoded.rows, decoded.nss
            seqs = [r["seq"] for r in rows]
            first = len(lines)
            whole = not decoded.rejected and not refused  # rows are all of the payload's
            fields = value_fields_from_json(msg.payload, rows) if whole else None
            lines += to_lines(gateway_id, rows, nss, fields)
            out.segments.append(
                Segment(msg_no, gateway_id, first, decoded.positions, chargers, seqs, nss)
            )
            self._offer_newest(out, gateway_id, first, chargers, seqs, nss, rows)

    @staticmethod
    def _offer_newest(
        out: PreparedBatch,
        gateway_id: str,
        first: int,
        chargers: list[str],
        seqs: list[int],
        nss: list[int],
        rows: list[ReadingRow],
    ) -> None:
        """Keep each charger's newest (ts, seq) reading of the batch in ``out.newest``.

        Usually a gateway sends in order: ts never falls and seq rises within a message, and
        each message starts after the gateway's readings seen so far in the batch. Then the
        last reading of a charger is its newest and one dict update (in C) does it; otherwise
        each reading is compared. A charger's readings all come from the gateway it is bound to.
        """
        newest = out.newest
        since = out.frontier.get(gateway_id)
        if (
            (since is None or (nss[0], seqs[0]) > since)
            and all(map(operator.le, nss, islice(nss, 1, None)))
            and all(map(operator.lt, seqs, islice(seqs, 1, None)))
        ):
            keys = zip(nss, seqs, repeat(gateway_id), rows, count(first))
            newest.update(zip(chargers, keys, strict=True))
            out.frontier[gateway_id] = (nss[-1], seqs[-1])
            return
        get = newest.get
        for k, (charger_id, seq, ns, row) in enumerate(
            zip(chargers, seqs, nss, rows, strict=True), first
        ):
            held = get(charger_id)
            if held is None or held[0] < ns or (held[0] == ns and held[1] < seq):
                newest[charger_id] = (ns, seq, gateway_id, row, k)
        hi_ns, hi_seq = max(nss), max(seqs)
        if since is not None:
            hi_ns, hi_seq = max(hi_ns, since[0]), max(hi_seq, since[1])
        out.frontier[gateway_id] = (hi_ns, hi_seq)

    def _unbound(self, gateway_id: str, chargers: list[str]) -> dict[str, str]:
        """The chargers ``gateway_id`` may not send for, each with the reason (first-come
        bindings are made here, once per charger of a message)."""
        refused = {}
        for charger_id in set(chargers):
            bound = self.bindings.claim(gateway_id, charger_id)
            if bound is not None:
                refused[charger_id] = (
                    f"charger {charger_id!r} is bound to gateway {bound!r}"
                    if bound
                    else f"charger {charger_id!r} is not provisioned for any gateway"
                )
        return refused

    async def _write_in_slot(self, lines: list[str]) -> list[tuple[str, str]]:
        async with self._write_slots:
            return await self._write(lines)

    async def _write(self, lines: list[str]) -> list[tuple[str, str]]:
        """Write ``lines``; return the lines InfluxDB refused for good, each with its reason.

        A refused batch is bisected so that only the offending lines are returned.
        """
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await self._writer.write(lines)
            except WriteRejectedError as exc:
                self.metrics.set_influx_ok(True)
                if len(lines) == 1:
                    return [(lines[0], exc.detail)]
                mid = len(lines) // 2
                return await self._write(lines[:mid]) + await self._write(lines[mid:])
            except WriteUnavailableError as exc:
                self.metrics.set_influx_ok(False)
                self.metrics.write_retries.inc()
                log.warning("InfluxDB write failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                delay = min(delay * 2, self._max_backoff_s)
            else:
                self.metrics.set_influx_ok(True)
                self.metrics.write_seconds.observe(time.perf_counter() - started)
                return []

    async def _dead_letter(self, gateway_id: str, topic: str, record: Rejected) -> None:
        payload = orjson.dumps(
            {
                "reason": record.reason,
                "detail": record.detail,
                "topic": topic,
                "gateway_id": gateway_id,
                "index": record.index,
                "ts": datetime.now(UTC).isoformat(),
                "payload_bytes": len(record.raw),
                "payload_truncated": len(record.raw) > DEADLETTER_MAX_RAW,
                "payload_b64": base64.b64encode(record.raw[:DEADLETTER_MAX_RAW]).decode(),
            }
        )
        log.warning(
            "dead-lettered from %s: %s (%s)",
            gateway_id,
            record.reason,
            record.detail[:200],
            extra={"gateway_id": gateway_id, "reason": record.reason},
        )
        await self._publish_until_acked(self._topics.deadletter(gateway_id), payload)

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
