"""The processor's CPU half: a batch of messages decoded, validated, checked against the
bindings and turned into line protocol, with no I/O (the commit does the I/O).

The hot loop works on whole messages: no per-point objects are kept, only the lines, small
per-line keys and each charger's newest reading (it may become the latest value).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import operator
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count, islice, repeat
from typing import Any, Protocol

import orjson

from processor.limits import GatewayLimits
from processor.lineproto import to_lines, value_fields_from_json
from processor.outputs.deadletters import bulk_of
from processor.outputs.registry import registry_lines
from processor.state.bindings import Bindings
from processor.state.gaps import GapTracker
from processor.validate import (
    BAD_TOPIC,
    CHARGER_NOT_BOUND,
    LIMIT_EXCEEDED,
    SEQ_OUT_OF_RANGE,
    UNKNOWN_GATEWAY,
    Decoded,
    Rejected,
    TsWindow,
    decode_message,
    raw_readings,
)
from telemetry_common.deadletters import (
    REPLAY_PROPERTY,
    DeadLetterIdError,
    DeadLetterKey,
    decode_id,
)
from telemetry_common.errors import TopicError
from telemetry_common.logthrottle import LogThrottle
from telemetry_common.schema import EPOCH_SHAPE, MAX_SEQ, ReadingRow
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)
#: WARNING lines about a gateway's input: at most one per gateway and kind a minute.
_warnings = LogThrottle(log, 60.0)


class Message(Protocol):
    """What the processor needs of a message the intake received."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


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
    #: The sender's outbox epoch (None: seqs numbered for the gateway's whole life).
    epoch: str | None = None
    #: A replayed dead letter's readings: stored, but they belong to an older conversation
    #: (no stored acknowledgement, no seq gap tracking).
    replay: bool = False


@dataclass(slots=True)
class Replay:
    """A message that replays the dead letter ``key`` (MQTT 5 user property ``replay-of``)."""

    key: DeadLetterKey
    msg_no: int
    #: Why it was refused again (its first new dead letter's reason); None: all stored so far.
    reason: str | None = None


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
    #: Per message: (gateway, epoch, every seq it carried): once committed, each is handled
    #: (stored or dead-lettered) and acknowledged to the gateway.
    handled: list[tuple[str, str | None, list[int]]] = field(default_factory=list)
    #: ``chargers`` registry points (retention policy ``keep``) of the readings that carry
    #: ``charger_info``: written with the batch, before it is acknowledged.
    registry: list[str] = field(default_factory=list)
    #: The replays among the messages: their outcome is written onto their dead letters.
    replays: list[Replay] = field(default_factory=list)
    #: Readings refused ``limit_exceeded``, per limit (counted in the metrics once committed).
    limits: Counter[str] = field(default_factory=Counter)

    def replay_of(self, msg_no: int) -> Replay | None:
        for replay in self.replays:
            if replay.msg_no == msg_no:
                return replay
        return None

    def sent(self, k: int) -> tuple[Segment, int, bytes]:
        """Line ``k``'s segment, its reading's position in the message, and that reading as it
        was sent (for a dead letter or a second decoding; each message is parsed once)."""
        seg = self.segments[bisect.bisect_right(self.segments, k, key=lambda s: s.first) - 1]
        items = self.parsed.get(seg.msg_no)
        if items is None:
            items = self.parsed[seg.msg_no] = raw_readings(self.sources[seg.msg_no][1])
        index = seg.positions[k - seg.first]
        return seg, index, orjson.dumps(items[index])


def _handled(out: PreparedBatch, gateway_id: str, epoch: str | None, seqs: list[int]) -> None:
    if seqs:
        out.handled.append((gateway_id, epoch, seqs))


def _with_epoch(record: Rejected, epoch: str | None) -> Rejected:
    """A single reading's dead letter keeps its batch's epoch (a whole message has it inside)."""
    if epoch is None or record.index is None:
        return record
    return dataclasses.replace(record, epoch=epoch)


def payload_epoch(payload: bytes) -> str | None:
    """The ``epoch`` a payload refused as a whole gives, if it is one (else None)."""
    try:
        epoch = orjson.loads(payload).get("epoch")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return epoch if isinstance(epoch, str) and re.fullmatch(EPOCH_SHAPE, epoch) else None


def replay_key(msg: Message, gateway_id: str) -> DeadLetterKey | None:
    """The dead letter ``msg`` replays (its ``replay-of`` user property), if it names one of
    ``gateway_id``'s: a gateway cannot mark another's dead letters as replayed."""
    for name, value in getattr(msg, "user_properties", ()):
        if name != REPLAY_PROPERTY:
            continue
        try:
            key = decode_id(value)
        except DeadLetterIdError as exc:
            _warnings.warning(
                (gateway_id, "replay-of"), "%s on %s ignored: %s", REPLAY_PROPERTY, msg.topic, exc
            )
            return None
        if key.gateway_id != gateway_id:
            _warnings.warning(
                (gateway_id, "replay-of"),
                "%s on %s names a dead letter of %s: ignored", REPLAY_PROPERTY, msg.topic,
                key.gateway_id,
            )  # fmt: skip
            return None
        return key
    return None


def payload_seqs(payload: bytes) -> list[int]:
    """Every integer ``seq`` of a payload's readings, as far as it parses (a message refused
    as a whole still acknowledges the seqs it carried: they are dead-lettered with it)."""
    try:
        items = orjson.loads(payload).get("readings")
    except (orjson.JSONDecodeError, AttributeError):
        return []
    if not isinstance(items, list):
        return []
    return [
        seq
        for item in items
        if isinstance(item, dict) and type(seq := item.get("seq")) is int and 0 <= seq < 2**63
    ]


class Preparer:
    def __init__(
        self,
        bindings: Bindings,
        topics: Topics,
        ts: TsWindow,
        gaps: GapTracker | None = None,
        max_seq_jump: int = 10**12,
        limits: GatewayLimits | None = None,
    ) -> None:
        """``gaps``: the highest seq known per gateway and epoch, for the ``max_seq_jump``
        rule (without it only seqs above ``MAX_SEQ`` are refused); ``limits``: the
        per-gateway limits (None: none)."""
        self._limits = limits
        self._bindings = bindings
        self._topics = topics
        self._ts = ts
        self._gaps = gaps
        self._max_jump = max_seq_jump

    async def prepare(
        self, messages: Sequence[Message], *, slice_bytes: int = 64 * 1024
    ) -> PreparedBatch:
        """Decode ``messages`` into a batch to commit, handing the event loop back after every
        ``slice_bytes`` of payload: a write's answer, acknowledgements and live publishes are
        then handled within a few milliseconds instead of after the whole batch (up to ~100 ms
        at 2 MiB). Prepared batches may be committed in any order, and concurrently."""
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

    def _decode(self, messages: Sequence[Message], out: PreparedBatch) -> None:
        """Decode ``messages`` into ``out`` (the hot loop: whole messages at a time, no
        per-point objects)."""
        now = datetime.now(UTC)
        lines = out.lines
        for msg in messages:
            msg_no = len(out.sources)
            out.sources.append((msg.topic, msg.payload))
            try:
                replayed = self._topics.gateway_of_replay(msg.topic)
                gateway_id = replayed or self._topics.gateway_of_readings(msg.topic)
            except (TopicError, ValueError) as exc:
                rejected = Rejected(BAD_TOPIC, str(exc), msg.payload)
                out.dead.append((UNKNOWN_GATEWAY, msg.topic, rejected))
                continue
            # Only the API may write the replay topics (ACL): ``replay-of`` on a gateway's own
            # readings topic is ignored, so no gateway can pass its messages off as replays.
            replay = replay_key(msg, gateway_id) if replayed is not None else None
            dead_from = len(out.dead)
            decoded = decode_message(gateway_id, msg.payload, now=now, ts=self._ts)
            out.dead.extend(
                (gateway_id, msg.topic, _with_epoch(r, decoded.epoch)) for r in decoded.rejected
            )
            # Acknowledged once the message is committed: every seq it carried, the
            # dead-lettered ones too (when some were, taken from the payload again: rare).
            whole = not decoded.rejected  # the rows are all of the payload's
            try:
                if not decoded.rows:
                    continue
                seqs = [r["seq"] for r in decoded.rows]
                if self._refuse_seqs(gateway_id, msg, decoded, seqs, out):
                    whole = False
                    if not decoded.rows:
                        continue
                    seqs = [r["seq"] for r in decoded.rows]
                chargers = [r["charger_id"] for r in decoded.rows]
                refused = self._unbound(gateway_id, chargers)
                if self._limits is not None and self._over_limits(
                    gateway_id, msg, decoded, chargers, refused, out
                ):
                    whole = False
                    if not decoded.rows:
                        continue
                    chargers = [r["charger_id"] for r in decoded.rows]
                    seqs = [r["seq"] for r in decoded.rows]
                    left = set(chargers)
                    refused = {c: why for c, why in refused.items() if c in left}
                self._claim(gateway_id, chargers, refused)
                if refused:
                    whole = False
                    items = raw_readings(msg.payload)
                    for k, charger_id in enumerate(chargers):
                        if charger_id in refused:
                            i = decoded.positions[k]
                            rejected = Rejected(
                                CHARGER_NOT_BOUND,
                                refused[charger_id],
                                orjson.dumps(items[i]),
                                i,
                                decoded.epoch,
                            )
                            out.dead.append((gateway_id, msg.topic, rejected))
                    decoded.keep([k for k, c in enumerate(chargers) if c not in refused])
                    if not decoded.rows:
                        continue
                    chargers = [r["charger_id"] for r in decoded.rows]
                    seqs = [r["seq"] for r in decoded.rows]
            finally:
                if replay is not None:
                    # A replay refused again keeps its one dead letter (the replayed one, whose
                    # outcome says why); its seqs are not acknowledged: they are old ones.
                    again = out.dead[dead_from:]
                    del out.dead[dead_from:]
                    reason = again[0][2].reason if again else None
                    out.replays.append(Replay(replay, msg_no, reason))
                    if again:
                        _, _, record = again[0]
                        _warnings.warning(
                            (gateway_id, "replay"),
                            "replay of dead letter %s refused again: %d records, %s (%s)",
                            replay.id, len(again), record.reason, record.detail[:200],
                        )  # fmt: skip
                elif whole:
                    if decoded.rows:
                        out.handled.append((gateway_id, decoded.epoch, seqs))
                else:  # a message refused whole still says its epoch
                    epoch = decoded.epoch or payload_epoch(msg.payload)
                    _handled(out, gateway_id, epoch, payload_seqs(msg.payload))
                    # One record per message: its refused readings together.
                    mine = [r for _, _, r in out.dead[dead_from:]]
                    out.dead[dead_from:] = [(gateway_id, msg.topic, r) for r in bulk_of(mine)]
            rows, nss = decoded.rows, decoded.nss
            first = len(lines)
            fields = value_fields_from_json(msg.payload, rows) if whole else None
            lines += to_lines(gateway_id, rows, nss, fields, decoded.epoch)
            if b'"charger_info"' in msg.payload:  # rare: a charger's boot
                out.registry += registry_lines(gateway_id, rows, nss)
            out.segments.append(
                Segment(
                    msg_no,
                    gateway_id,
                    first,
                    decoded.positions,
                    chargers,
                    seqs,
                    nss,
                    decoded.epoch,
                    replay is not None,
                )
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

    def _refuse_seqs(
        self, gateway_id: str, msg: Message, decoded: Decoded, seqs: list[int], out: PreparedBatch
    ) -> bool:
        """Dead-letter the readings whose seq is out of range (above ``MAX_SEQ``, or more than
        ``max_seq_jump`` above the highest seq known of the gateway's epoch: one absurd seq
        would blind its gap tracking); True if some were."""
        high = 0
        ceiling = MAX_SEQ
        if self._gaps is not None:
            high = self._gaps.high(gateway_id, decoded.epoch) or 0
            ceiling = min(MAX_SEQ, high + self._max_jump)
        if max(seqs) <= ceiling:
            return False
        items = raw_readings(msg.payload)
        of = f"gateway {gateway_id!r}" + (f", epoch {decoded.epoch}" if decoded.epoch else "")
        for k, seq in enumerate(seqs):
            if seq > ceiling:
                i = decoded.positions[k]
                detail = (
                    f"seq {seq} is above 2^53-1"
                    if seq > MAX_SEQ
                    else f"seq {seq} is more than {self._max_jump} above {high}, the highest "
                    f"seq known of {of}"
                )
                raw = orjson.dumps(items[i])
                rejected = Rejected(SEQ_OUT_OF_RANGE, detail, raw, i, decoded.epoch)
                out.dead.append((gateway_id, msg.topic, rejected))
        decoded.keep([k for k, seq in enumerate(seqs) if seq <= ceiling])
        return True

    def _over_limits(
        self,
        gateway_id: str,
        msg: Message,
        decoded: Decoded,
        chargers: list[str],
        unbound: dict[str, str],
        out: PreparedBatch,
    ) -> bool:
        """Dead-letter the readings over a per-gateway limit (:mod:`processor.limits`; the
        readings of chargers the gateway may not send for are left to the bindings' reason and
        not counted); True if some were."""
        assert self._limits is not None
        if unbound:
            ks = [k for k, c in enumerate(chargers) if c not in unbound]
            over = self._limits.check(
                gateway_id, [decoded.rows[k] for k in ks], [chargers[k] for k in ks]
            )
            over = [dataclasses.replace(o, row=ks[o.row]) for o in over]
        else:
            over = self._limits.check(gateway_id, decoded.rows, chargers)
        if not over:
            return False
        items = raw_readings(msg.payload)
        for o in over:
            i = decoded.positions[o.row]
            rejected = Rejected(LIMIT_EXCEEDED, o.detail, orjson.dumps(items[i]), i, decoded.epoch)
            out.dead.append((gateway_id, msg.topic, rejected))
            out.limits[o.limit] += 1
        dropped = {o.row for o in over}
        decoded.keep([k for k in range(len(chargers)) if k not in dropped])
        return True

    def _claim(self, gateway_id: str, chargers: list[str], unbound: dict[str, str]) -> None:
        """First-come: bind the chargers of readings accepted so far to ``gateway_id`` (after
        the limits, so a refused charger id is not remembered)."""
        if self._bindings.first_come:
            for charger_id in set(chargers):
                if charger_id not in unbound:
                    self._bindings.claim(gateway_id, charger_id)

    def _unbound(self, gateway_id: str, chargers: list[str]) -> dict[str, str]:
        """The chargers ``gateway_id`` may not send for, each with the reason (first-come
        bindings are made by :meth:`_claim`, once the limits accepted a reading)."""
        refused = {}
        for charger_id in set(chargers):
            bound = self._bindings.check(gateway_id, charger_id)
            if bound is not None:
                refused[charger_id] = (
                    f"charger {charger_id!r} is bound to gateway {bound!r}"
                    if bound
                    else f"charger {charger_id!r} is not provisioned for any gateway"
                )
        return refused
