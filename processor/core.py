"""The processor: a batch is prepared (CPU: :mod:`processor.prepare`), then committed to the
outputs (I/O: :mod:`processor.outputs`), and the state is updated with what was stored.

``commit(batch)`` returns only when every reading of the batch is stored in InfluxDB, as a
reading or as a dead letter (whose record the broker also acknowledged); the intake then
acknowledges the messages (guarantee 1), and the gateways are told which seqs are handled
(:mod:`processor.outputs.acks`: they forget a reading only then). InfluxDB being unavailable
makes it wait and retry (capped backoff), never drop.
Only what InfluxDB holds may become a charger's latest value or close a seq gap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from processor.horizon import Horizon, window_of
from processor.limits import GatewayLimits
from processor.metrics import Metrics
from processor.outputs.acks import StoredAcks
from processor.outputs.deadletters import (
    STORED_MAX_RAW,
    DeadLetters,
    bulk_of,
    deadletter_lines,
    replay_outcome_lines,
)
from processor.outputs.influx import InfluxOutput, cardinality_limit
from processor.outputs.late import late_lines
from processor.outputs.live import LiveFeed
from processor.prepare import Message, PreparedBatch, Preparer, Segment
from processor.settings import ProcessorSettings
from processor.state import State
from processor.state.bindings import Bindings
from processor.state.lvc import Stamp
from processor.state.newest import NewestState
from processor.state.storage import (
    WarmUp,
    complete_warm_up,
    confirm_gaps_forever,
    refresh_bindings_forever,
    warm_up,
)
from processor.validate import INFLUX_REJECTED, LIMIT_EXCEEDED, Rejected
from telemetry_common.deadletters import OUTCOME_STORED, outcome_deadlettered
from telemetry_common.influx_query import InfluxQL
from telemetry_common.influx_write import InfluxWriter
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.newest_state import ChargerMark
from telemetry_common.schema import READING_ROW_VALIDATOR, ReadingRow
from telemetry_common.storage import KEEP_RP
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)


class Processor:
    """Built once from its collaborators (:meth:`build` wires them from the settings)."""

    def __init__(
        self,
        state: State,
        preparer: Preparer,
        influx: InfluxOutput,
        deadletters: DeadLetters,
        live: LiveFeed,
        metrics: Metrics,
        acks: StoredAcks | None = None,
        name: str = "bridge",
        horizon: Horizon | None = None,
    ) -> None:
        """``acks``: None sends no stored acknowledgements (gateways that delete on PUBACK);
        ``name``: the bridge's public name (tag ``bridge`` of the ``seqgaps`` it stores);
        ``horizon``: keeps the preparer's ``ts_too_old`` horizon at the raw retention (None:
        the horizon stays as the preparer was given it)."""
        self.name = name
        self.horizon = horizon
        self.state = state
        self.preparer = preparer
        self.influx = influx
        self.deadletters = deadletters
        self.live = live
        self.metrics = metrics
        self.acks = acks
        #: This bridge's points of the newest-stored state (written with each batch).
        self.newest = NewestState(name)
        #: What the warm-up left to do after consuming began (None: nothing).
        self._rest_of_warm_up: tuple[InfluxQL, float, float, float, WarmUp] | None = None
        state.watch(metrics)

    @classmethod
    def build(
        cls,
        settings: ProcessorSettings,
        topics: Topics,
        *,
        writer: InfluxWriter,
        mqtt: AsyncMqttClient,
        metrics: Metrics,
        bindings: Bindings,
        busy: Callable[[], bool] | None = None,
        database: str = "telemetry",
    ) -> Processor:
        """The processor of ``settings``: outputs to ``writer`` and ``mqtt`` (dead letters, live
        feed); ``bindings`` from :func:`~processor.state.bindings.load_bindings` (loaded before
        any connection, so a bad file fails at once); ``busy()`` says ingestion is behind (the
        live feed then yields); ``database``: whose raw retention is the ``ts_too_old``
        horizon (:mod:`processor.horizon`)."""
        limits = GatewayLimits(settings.limit_settings(), bound_to=bindings.get)
        state = State(bindings=bindings, limits=limits)
        window = window_of(settings)
        return cls(
            state,
            Preparer(
                state.bindings,
                topics,
                window,
                state.gaps,
                settings.max_seq_jump,
                state.limits,
            ),
            InfluxOutput(
                writer,
                metrics,
                max_lines=settings.write_max_lines,
                concurrency=settings.write_concurrency,
                max_backoff_s=settings.max_backoff_s,
            ),
            DeadLetters(mqtt, topics, metrics, settings.max_backoff_s),
            LiveFeed(
                mqtt,
                topics,
                metrics,
                settings.live_interval_s,
                settings.live_max_rate,
                busy_rate=settings.live_busy_rate,
                busy=busy,
            ),
            metrics,
            StoredAcks(
                mqtt,
                topics,
                metrics,
                settings.ack_interval_s,
                settings.ack_max_rate,
                eager_readings=settings.ack_eager_readings,
            )
            if settings.stored_acks
            else None,
            name=mqtt.name,
            horizon=Horizon(window, settings, database),
        )

    async def warm_up(
        self,
        storage: InfluxQL,
        max_backoff_s: float,
        budget_s: float = 30.0,
        window_s: float = 3600.0,
        history_s: float | None = None,
    ) -> None:
        """Read the raw retention (the ``ts_too_old`` horizon) and seed the state from the
        newest-stored state and a recent window of InfluxDB (before the first batch, within
        ``budget_s``); what is left is done by :meth:`run` (older history back to ``history_s``
        on a database without the state; default: the ``ts_too_old`` horizon). The chargers
        whose newest reading is known then are their gateways' for the limits (never "new"
        again)."""
        if self.horizon is not None:
            await self.horizon.refresh(storage)
        done = await warm_up(
            self.state, storage, max_backoff_s, self.newest, budget_s=budget_s, window_s=window_s
        )
        if not done.complete:
            if history_s is None:  # back to the ts_too_old horizon: nothing older is accepted
                window = self.horizon.window if self.horizon is not None else None
                history_s = window.max_age.total_seconds() if window else 366 * 86400.0
            self._rest_of_warm_up = (storage, window_s, history_s, max_backoff_s, done)
        known = self.state.limits.seed(self.state.lvc.gateways())
        log.info("limits: %d chargers known of their gateways", known)

    async def run(
        self, storage: InfluxQL, gap_grace_s: float, bindings_refresh_s: float | None = None
    ) -> None:
        """The processor's own tasks, until cancelled: the live feed, stored acknowledgements,
        gap confirmation, (every ``bindings_refresh_s``) the bindings store's refresh and the
        ``ts_too_old`` horizon's (:mod:`processor.horizon`)."""
        async with asyncio.TaskGroup() as tg:
            if self.horizon is not None:
                tg.create_task(self.horizon.run(storage), name="ts-horizon")
            if self._rest_of_warm_up is not None:
                client, window_s, history_s, backoff_s, done = self._rest_of_warm_up
                tg.create_task(
                    complete_warm_up(
                        self.state,
                        client,
                        self.newest,
                        functools.partial(self.influx.write, rp=KEEP_RP),
                        window_s,
                        done,
                        history_s,
                        backoff_s,
                    ),
                    name="warm-up",
                )
            if bindings_refresh_s is not None:
                tg.create_task(
                    refresh_bindings_forever(self.state.bindings, storage, bindings_refresh_s),
                    name="bindings-refresh",
                )
            tg.create_task(self.live.run(), name="live-feed")
            if self.acks is not None:
                tg.create_task(self.acks.run(), name="stored-acks")
            tg.create_task(
                confirm_gaps_forever(
                    self.state, storage, gap_grace_s, self.influx.write, bridge=self.name
                ),
                name="gaps",
            )

    async def flush(self) -> None:
        """Publish every stored acknowledgement and every value waiting for the live feed,
        beyond their budgets (at shutdown)."""
        if self.acks is not None:
            await self.acks.flush(budget=False)
        await self.live.flush(budget=False)

    async def prepare(self, messages: Sequence[Message]) -> PreparedBatch:
        """The CPU half (see :meth:`Preparer.prepare`)."""
        return await self.preparer.prepare(messages)

    async def commit(self, batch: PreparedBatch) -> None:
        """The I/O half: write, dead-letter, then update the cache, live feed and gap tracking."""
        lines = batch.lines
        refused_at: set[int] = set()
        # Readings older than the rollup job looks back are marked for it, in the same request
        # (a backlog drained is all late: a request of its own would double its round trips).
        late = late_lines(
            ((s.gateway_id, s.nss) for s in batch.segments), time.time_ns(), bridge=self.name
        )
        # One group per message (and the rollup marks): a cardinality refusal costs the
        # messages that add the refused series, not a bisection of the batch.
        groups = [len(seg.seqs) for seg in batch.segments] + ([len(late)] if late else [])
        refused = await self.influx.write(lines + late if late else lines, groups=groups)
        if late and any(line in refused for line in late):
            log.error(
                "InfluxDB refused rollup_late lines: %s", [refused[x] for x in late if x in refused]
            )
        if refused:
            # Only what InfluxDB holds may become the latest value or close a seq gap.
            refused_at = {k for k, line in enumerate(lines) if line in refused}
            bulk: dict[int, tuple[str, list[Rejected]]] = {}  # message -> its refused readings
            for k in sorted(refused_at):
                seg, index, raw = batch.sent(k)
                if seg.replay:
                    replay = batch.replay_of(seg.msg_no)
                    if replay is not None and replay.reason is None:
                        replay.reason = INFLUX_REJECTED
                    continue  # its dead letter is the one replayed
                why = refused[lines[k]]
                limit = cardinality_limit(why)
                if limit is None:
                    rejected = Rejected(INFLUX_REJECTED, why, raw, index, seg.epoch)
                else:
                    detail = f"{limit}: InfluxDB refused new series: {why}"
                    rejected = Rejected(LIMIT_EXCEEDED, detail, raw, index, seg.epoch)
                    batch.limits[limit] += 1
                bulk.setdefault(seg.msg_no, (seg.gateway_id, []))[1].append(rejected)
            for msg_no, (gateway_id, records) in bulk.items():  # one record per message
                topic = batch.sources[msg_no][0]
                batch.dead += [(gateway_id, topic, r) for r in bulk_of(records)]
        self.metrics.stored.inc(len(lines) - len(refused_at))
        for limit, n in batch.limits.items():
            self.metrics.limit_exceeded.labels(limit).inc(n)
        newest = batch.newest
        if refused_at:
            newest = self._newest_stored(batch, refused_at)
        # What chargers said about themselves at boot, and the newest-stored state this batch
        # advanced: both kept for good, in one request, before the batch is acknowledged.
        keep = batch.registry + self._state_lines(batch, newest, refused_at)
        if keep:
            for line, why in (await self.influx.write(keep, rp=KEEP_RP)).items():
                log.error("InfluxDB refused a point of keep (%s): %s", why, line[:200])
        # Durable first: a dead letter's seqs are handled (acknowledged below) only once it is
        # stored whole; a gateway with one that is not is acknowledged nothing of this batch
        # (it sends the batch again: a replay is harmless, a lost reading is not).
        unsafe: set[str] = set()
        if batch.dead:
            dead_lines = deadletter_lines(batch.dead, time.time_ns())
            dead_refused = await self.influx.write(dead_lines)
            for (gateway_id, _, record), line in zip(batch.dead, dead_lines, strict=True):
                if line in dead_refused:
                    log.error(
                        "InfluxDB refused a dead letter of %s (%s): %s; not acknowledged",
                        gateway_id,
                        dead_refused[line],
                        line[:200],
                    )
                    unsafe.add(gateway_id)
                elif len(record.raw) > STORED_MAX_RAW:  # stored cut short
                    unsafe.add(gateway_id)
        for gateway_id, topic, record in batch.dead:
            await self.deadletters.publish(gateway_id, topic, record)
        self.metrics.messages.inc(batch.messages)
        if self.acks is not None:
            for gateway_id, epoch, seqs in batch.handled:
                if gateway_id not in unsafe:
                    self.acks.add(gateway_id, epoch, seqs)
        now = time.monotonic()
        gaps = self.state.gaps
        for seg in batch.segments:
            if seg.replay:  # old seqs: they neither open nor close a gap
                continue
            seqs, nss = seg.seqs, seg.nss
            if refused_at:
                stored = [j for j in range(len(seqs)) if seg.first + j not in refused_at]
                seqs, nss = [seqs[j] for j in stored], [nss[j] for j in stored]
            gaps.observe_all(seg.gateway_id, seqs, nss, now, seg.epoch)
        if batch.replays:
            await self._replayed(batch)
        lvc = self.state.lvc
        for charger_id, (ns, seq, gateway_id, row, _) in newest.items():
            if lvc.offer(charger_id, Stamp(ns, seq, gateway_id)):
                self.live.offer(gateway_id, row)

    def _state_lines(
        self,
        batch: PreparedBatch,
        newest: dict[str, tuple[int, int, str, ReadingRow, int]],
        refused_at: set[int],
    ) -> list[str]:
        """The newest-stored state's points that this batch's stored readings advance."""

        def stored(seg: Segment) -> tuple[tuple[str, str | None], list[int], list[int]]:
            seqs, nss = seg.seqs, seg.nss
            if refused_at:
                kept = [j for j in range(len(seqs)) if seg.first + j not in refused_at]
                seqs, nss = [seqs[j] for j in kept], [nss[j] for j in kept]
            return (seg.gateway_id, seg.epoch), seqs, nss

        return self.newest.lines(
            ((c, ChargerMark(ns, seq, gw)) for c, (ns, seq, gw, _, _) in newest.items()),
            (stored(seg) for seg in batch.segments if not seg.replay),
        )

    async def _replayed(self, batch: PreparedBatch) -> None:
        """Write each replay's outcome onto its dead letter (the message is acknowledged to
        the broker only after this, so a replay's outcome is never lost once it is gone)."""
        outcomes = [
            (r.key, OUTCOME_STORED if r.reason is None else outcome_deadlettered(r.reason))
            for r in batch.replays
        ]
        lines = replay_outcome_lines(outcomes, datetime.now(UTC))
        refused = await self.influx.write(lines)
        for (key, outcome), line in zip(outcomes, lines, strict=True):
            if line in refused:
                log.error("InfluxDB refused the outcome of replay %s: %s", key.id, refused[line])
            else:
                log.info(
                    "replay of dead letter %s: %s",
                    key.id,
                    outcome,
                    extra={"gateway_id": key.gateway_id, "reason": key.reason},
                )

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
