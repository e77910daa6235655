"""One pass of the sessions job, and a backfill of a range (docs/deploy.md#sessions).

A pass finds the sessions to compute, computes each from its readings
(:func:`sessions.compute.compute`) and writes the points that changed, in one write:

- the transactions of the readings stamped since the previous pass (less ``OVERLAP``), and of
  the whole ``LOOKBACK`` at the first pass and every ``LOOKBACK_EVERY`` (readings stored late,
  but less than ``LATE_AFTER_S``);
- those of the ranges the bridges marked as stored late (``rollup_late``, read with a watermark
  of the job's own, as the rollup job does);
- every session stored ``active``, so it ends by ``next`` or ``silence`` without new readings.

The steady pass (no sweep, a stretch of at most ``STEADY_MAX`` since the previous pass) reads
every reading of its stretch in one query (:class:`Window`): an active session this process
computed, and the store holds as computed, is carried on with its readings newer than its newest
(``compute(prior=...)``, equal to computing it whole), and whether its connector has a newer
reading of another or no transaction is read there too. Every other session (new, ended,
marked, and all of them at a sweep) is computed whole: its readings are read from ``lo``, its
stored ``started_at`` (or the start of the window that named it, if earlier), or
``MAX_SESSION`` before that window for a transaction not stored yet. A session whose point key
(tags, ``started_at``) changed is written at its new key and its old point written again with
``state`` ``superseded``. At most ``MAX_SESSIONS_PER_PASS`` are computed per pass; the rest
wait (in memory) for the next, and the progress (``session_state``: ``scanned_until_ns``,
``marks_until_ns``) is stored only once none waits but stored active ones (found again in the
store at every pass), so a restart finds them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from sessions import queries
from sessions.answers import Key, Window, ends, gaps_of, rows_of, sessions_of
from sessions.compute import Row, Session, compute, to_line
from sessions.metrics import SessionMetrics
from sessions.rewrite import delete_statement, points_to_write
from sessions.settings import SessionsSettings, to_timedelta
from telemetry_common.influx_query import InfluxQLClient, InfluxQueryError, Series
from telemetry_common.influx_write import InfluxWriter
from telemetry_common.influxql import late_marks_query
from telemetry_common.storage import KEEP_RP, SEQGAP_WINDOW_S, SESSION_STATE_MEASUREMENT

log = logging.getLogger(__name__)

NS: Final = 1_000_000_000
#: Each pass looks this far before the end of the previous one (readings a little late).
OVERLAP: Final = timedelta(minutes=1)
#: A pass reads every reading of its stretch when it is at most this long (the steady state);
#: a longer one (a job that was down) lists the transactions and reads each session whole.
STEADY_MAX: Final = timedelta(minutes=15)
#: The bridges stamp their marks with their own clocks: marks are read back this far before the
#: watermark (a mark taken twice costs a recompute, nothing else).
MARKS_MARGIN: Final = timedelta(minutes=5)
MARKS_PER_PASS: Final = 10_000
#: Sessions whose readings are read in one request.
BATCH: Final = 50
#: A discovery query covers at most this much time (a long stretch is cut).
DISCOVERY_CHUNK: Final = timedelta(days=1)


def to_ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


@dataclass
class Candidate:
    """A session to compute: ``seen_from_ns`` the start of the earliest window that named it."""

    charger_id: str
    transaction_id: str
    seen_from_ns: int
    #: Computed from all its readings (a LOOKBACK sweep, a late mark), not carried on.
    whole: bool = False


@dataclass
class PassResult:
    computed: int = 0
    written: dict[str, int] = field(
        default_factory=lambda: {"active": 0, "ended": 0, "superseded": 0}
    )
    deferred: int = 0
    marks: int = 0
    scanned_until: datetime | None = None


class SessionJob:
    """Computes sessions through an InfluxQL client and a line-protocol writer."""

    def __init__(
        self,
        settings: SessionsSettings,
        client: InfluxQLClient,
        writer: InfluxWriter,
        metrics: SessionMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._s = settings
        self._db = settings.influx.database
        self._client = client
        self._writer = writer
        self.metrics = metrics or SessionMetrics()
        self._now = now
        self._silence = to_ns_delta(to_timedelta(settings.silence))
        self._lookback = to_ns_delta(to_timedelta(settings.lookback))
        self._lookback_every = to_ns_delta(to_timedelta(settings.lookback_every))
        self._max_session = to_ns_delta(to_timedelta(settings.max_session))
        self._loaded = False
        self._scanned: int | None = None  # the readings stamped before this were scanned
        self._marks_until: int | None = None  # the newest late mark taken
        self._marks_seen: set[tuple[int, str, str]] = set()
        self._swept: int | None = None  # when the last LOOKBACK sweep ran
        self._pending: dict[Key, Candidate] = {}
        self._saved: int | None = None  # the scanned_until_ns stored last
        #: The active sessions this process computed: carried on with their newer readings
        #: between LOOKBACK sweeps.
        self._carried: dict[Key, Session] = {}

    # -- progress ---------------------------------------------------------------------------
    async def _load_state(self) -> None:
        answers = await self._client.execute_all(
            [queries.state_query(self._db, f) for f in ("scanned_until_ns", "marks_until_ns")]
        )
        values = [_first_value(a) for a in answers]
        self._scanned, self._marks_until = values[0], values[1]
        self._saved = self._scanned
        self._loaded = True

    async def _save_state(self, now_ns: int) -> None:
        assert self._scanned is not None
        assert self._marks_until is not None
        day = now_ns - now_ns % (86_400 * NS)  # one point per day, overwritten during the day
        line = (
            f"{SESSION_STATE_MEASUREMENT} scanned_until_ns={self._scanned}i,"
            f"marks_until_ns={self._marks_until}i {day}"
        )
        await self._writer.write([line], rp=KEEP_RP)
        self._saved = self._scanned

    # -- a pass -----------------------------------------------------------------------------
    async def run_pass(self) -> PassResult:
        started = time.monotonic()
        result = PassResult()
        now = to_ns(self._now())
        if not self._loaded:
            await self._load_state()
        sweep = self._swept is None or now - self._swept >= self._lookback_every
        start = now - self._lookback if sweep else now
        if self._scanned is not None:
            start = min(start, self._scanned - to_ns_delta(OVERLAP))
        steady = not sweep and now - start <= to_ns_delta(STEADY_MAX)
        windows = [(a, None if b == now else b, None) for a, b in _chunks(start, now)]
        statements = [queries.discovery_query(a, b) for a, b, _ in windows]
        if steady:
            statements = [queries.window_readings_query(start)]
        statements.append(queries.active_sessions_query(self._db, now - self._max_session))
        take_marks = self._marks_until is not None
        if take_marks:
            assert self._marks_until is not None
            since = from_ns(self._marks_until) - MARKS_MARGIN
            statements.append(late_marks_query(since, MARKS_PER_PASS))
        answers = await self._client.execute_all(statements)
        found: dict[Key, Candidate] = {}
        window: Window | None = None
        if steady:
            window = Window.of(start, answers[0])
            for charger, tx in window.sessions:
                _add(found, Candidate(charger, tx, start))
        else:
            for (a, _, _), answer in zip(windows, answers, strict=False):
                _discovered(answer, a, found, whole=sweep)
        active = {(s.charger_id, s.transaction_id): s for s in sessions_of(answers[len(windows)])}
        if take_marks:
            marked = self._marks(answers[-1])
            result.marks = len(marked)
            if marked:
                mark_q = [queries.discovery_query(a, b, gw) for gw, a, b in marked]
                for (_, a, _), answer in zip(
                    marked, await self._client.execute_all(mark_q), strict=True
                ):
                    _discovered(answer, a, found, whole=True)
        else:
            self._marks_until = now - to_ns_delta(MARKS_MARGIN)  # the first pass starts here
        for key, s in active.items():
            _add(found, Candidate(key[0], key[1], s.started_at_ns, sweep))
        for c in found.values():
            _add(self._pending, c)
        take = list(self._pending.values())[: self._s.max_sessions_per_pass]
        for c in take:
            del self._pending[(c.charger_id, c.transaction_id)]
        if self._pending:
            log.warning(
                "%d sessions left for the next pass (MAX_SESSIONS_PER_PASS=%d)",
                len(self._pending),
                self._s.max_sessions_per_pass,
            )
        result.deferred = len(self._pending)
        await self._compute_and_write(take, active, now, result, window)
        self._scanned = now
        if sweep:
            self._swept = now
        # A deferred session stored active (and not due whole) is found again in the store at
        # every pass: it does not hold the progress back (there may always be more of those
        # than a pass computes).
        if not any(c.whole or key not in active for key, c in self._pending.items()):
            await self._save_state(now)
            result.scanned_until = from_ns(now)
        self._finish(result, started, now)
        return result

    async def backfill(self, start: datetime, end: datetime) -> PassResult:
        """Recompute every session with a reading stamped in ``[start, end]`` (the progress is
        left alone)."""
        result = PassResult()
        now = to_ns(self._now())
        found: dict[Key, Candidate] = {}
        for a, b in _chunks(to_ns(start), to_ns(end)):
            answer = await self._client.execute(queries.discovery_query(a, b))
            _discovered(answer, a, found, whole=True)
        active_q = queries.active_sessions_query(self._db, now - self._max_session)
        active = {
            (s.charger_id, s.transaction_id): s
            for s in sessions_of(await self._client.execute(active_q))
        }
        todo = list(found.values())
        step = max(self._s.max_sessions_per_pass, BATCH)
        for i in range(0, len(todo), step):
            await self._compute_and_write(todo[i : i + step], active, now, result)
        log.info(
            "backfill %s..%s: %d sessions computed, %s written",
            start.isoformat(),
            end.isoformat(),
            result.computed,
            result.written,
        )
        return result

    def _finish(self, result: PassResult, started: float, now: int) -> None:
        m = self.metrics
        m.run_seconds.observe(time.monotonic() - started)
        m.deferred.set(result.deferred)
        if self._saved is not None:
            m.lag_seconds.set((now - self._saved) / NS)
        m.last_success.set(time.time())

    # -- late marks -------------------------------------------------------------------------
    def _marks(self, answer: Sequence[Series]) -> list[tuple[str, int, int]]:
        """(gateway, first, last) of the marks not taken yet; moves the watermark past them."""
        assert self._marks_until is not None
        newest = self._marks_until
        seen: set[tuple[int, str, str]] = set()
        out = []
        for s in answer:
            for row in s.rows():
                t = int(row["time"])
                key = (t, str(row.get("bridge")), str(row.get("gateway_id")))
                seen.add(key)
                if key in self._marks_seen or row.get("first") is None or not row.get("gateway_id"):
                    continue
                out.append((str(row["gateway_id"]), int(row["first"]), int(row["last"])))
                newest = max(newest, t)
        margin = newest - to_ns_delta(MARKS_MARGIN)
        self._marks_seen = {k for k in self._marks_seen | seen if k[0] > margin}
        self._marks_until = newest
        return out

    # -- computing --------------------------------------------------------------------------
    async def _compute_and_write(
        self,
        todo: Sequence[Candidate],
        active: dict[Key, Session],
        now: int,
        result: PassResult,
        window: Window | None = None,
    ) -> None:
        stored = dict(active)
        carried: list[Candidate] = []
        if window is not None:
            # Active sessions this process computed, as stored: carried on with the window's
            # readings (no request of their own); the others are read.
            for c in todo:
                key = (c.charger_id, c.transaction_id)
                prior = self._carried.get(key)
                if not c.whole and prior is not None and prior.same_as(stored.get(key)):
                    new_rows = [
                        r
                        for r in window.sessions.get(key, ())
                        if r.ts_ns > prior.last_reading_at_ns
                    ]
                    if not any(r.tx_event == "started" for r in new_rows):
                        carried.append(c)
            taken = {id(c) for c in carried}
            todo = [c for c in todo if id(c) not in taken]
        unknown = [c for c in todo if (c.charger_id, c.transaction_id) not in stored]
        for i in range(0, len(unknown), BATCH):
            batch = unknown[i : i + BATCH]
            qs = [
                queries.stored_session_query(
                    self._db, c.charger_id, c.transaction_id, c.seen_from_ns - self._max_session
                )
                for c in batch
            ]
            for answer in await self._client.execute_all(qs):
                for s in sessions_of(answer):
                    held = stored.get((s.charger_id, s.transaction_id))
                    if held is None or s.computed_at_ns > held.computed_at_ns:
                        stored[(s.charger_id, s.transaction_id)] = s
        lines: list[str] = []
        deletes: list[str] = []
        chunks: list[tuple[Sequence[Candidate], bool]] = [
            (todo[i : i + BATCH], False) for i in range(0, len(todo), BATCH)
        ]
        if carried:
            assert window is not None
            chunks.insert(0, (carried, True))
        for chunk, from_window in chunks:
            if from_window:
                assert window is not None
                computed = await self._carry_on(chunk, window, now)
            else:
                computed = await self._compute_batch(chunk, stored, now)
            result.computed += len(chunk)
            self.metrics.computed.inc(len(chunk))
            for c, new in zip(chunk, computed, strict=True):
                old = stored.get((c.charger_id, c.transaction_id))
                for s, delete in points_to_write(old, new, now, self._silence):
                    lines.append(to_line(s))
                    result.written[s.state] += 1
                    if delete:
                        deletes.append(delete_statement(s))
        if deletes and self._s.influx.api == "v1":
            try:
                await self._client.execute_all(deletes)
            except InfluxQueryError as exc:  # a user without the right: the field stays
                log.warning("stale session fields not dropped (%d points): %s", len(deletes), exc)
        if lines:
            await self._writer.write(lines, rp=KEEP_RP)
            for state, n in result.written.items():
                self.metrics.written.labels(state).inc(n)

    async def _carry_on(
        self, batch: Sequence[Candidate], window: Window, now: int
    ) -> list[Session | None]:
        """The carried sessions of ``batch`` on with the window's readings newer than their
        newest; whether the connector has a newer reading is read from the window too (asked
        of InfluxDB only for a session whose newest reading lies before the window); one
        request for those and the gateways' gaps."""
        checks: list[str] = []
        newer_at: dict[int, int] = {}
        gateways: dict[str, int] = {}
        news: list[list[Row]] = []
        for i, c in enumerate(batch):
            prior = self._carried[(c.charger_id, c.transaction_id)]
            rows = [
                r
                for r in window.sessions.get((c.charger_id, c.transaction_id), ())
                if r.ts_ns > prior.last_reading_at_ns
            ]
            news.append(rows)
            since = prior.started_at_ns - int(SEQGAP_WINDOW_S) * NS
            gateways[prior.gateway_id] = min(gateways.get(prior.gateway_id, since), since)
            newest = rows[-1].ts_ns if rows else prior.last_reading_at_ns
            if newest < window.start_ns and not any(r.tx_event == "ended" for r in rows):
                newer_at[i] = len(checks)
                checks += queries.newer_reading_queries(
                    c.charger_id, prior.evse_id, prior.connector_id, newest
                )
        gw_at = {}
        for gw, since in gateways.items():
            gw_at[gw] = len(checks)
            checks.append(queries.seqgaps_of_gateway_query(gw, since))
        answers = await self._client.execute_all(checks) if checks else []
        out: list[Session | None] = []
        for i, (c, rows) in enumerate(zip(batch, news, strict=True)):
            key = (c.charger_id, c.transaction_id)
            prior = self._carried[key]
            newest = rows[-1].ts_ns if rows else prior.last_reading_at_ns
            if i in newer_at:
                newer = ends(answers[newer_at[i]], answers[newer_at[i] + 1])
            else:
                newer = window.newer(
                    c.charger_id, prior.evse_id, prior.connector_id, newest, key[1]
                )
            session = compute(
                c.charger_id,
                c.transaction_id,
                rows,
                now_ns=now,
                silence_ns=self._silence,
                newer_on_connector=newer,
                gaps=gaps_of(answers[gw_at[prior.gateway_id]]),
                prior=prior,
            )
            assert session is not None
            if session.state == "active":
                self._carried[key] = session
            else:
                self._carried.pop(key, None)
            out.append(session)
        return out

    async def _compute_batch(
        self, batch: Sequence[Candidate], stored: dict[Key, Session], now: int
    ) -> list[Session | None]:
        """Each candidate's session from its readings (None: no reading found): whole, or an
        active session this process computed (and the store holds as computed) carried on
        with its newer readings, unless the candidate must be computed whole."""
        priors: list[Session | None] = []
        reads = []
        for c in batch:
            key = (c.charger_id, c.transaction_id)
            old = stored.get(key)
            prior = None if c.whole else self._carried.get(key)
            if prior is not None and prior.same_as(old):
                lo = prior.last_reading_at_ns + 1
            elif old is not None:
                prior, lo = None, min(old.started_at_ns, c.seen_from_ns)
            else:
                prior, lo = None, c.seen_from_ns - self._max_session
            priors.append(prior)
            reads.append(queries.session_readings_query(c.charger_id, c.transaction_id, lo))
        read = [rows_of(answer) for answer in await self._client.execute_all(reads)]
        # A start among the newer readings moves the session's start: read it whole.
        redo = [
            i
            for i, (p, rows) in enumerate(zip(priors, read, strict=True))
            if p is not None and any(r.tx_event == "started" for r in rows)
        ]
        if redo:
            again = [
                queries.session_readings_query(
                    batch[i].charger_id,
                    batch[i].transaction_id,
                    min(p.started_at_ns, batch[i].seen_from_ns),
                )
                for i in redo
                if (p := priors[i]) is not None
            ]
            for i, answer in zip(redo, await self._client.execute_all(again), strict=True):
                priors[i], read[i] = None, rows_of(answer)
        # Round two: whether each open one's connector has a newer reading; the gateways' gaps.
        checks: list[str] = []
        newer_at: dict[int, int] = {}
        gateways: dict[str, int] = {}
        for i, (c, rows, prior) in enumerate(zip(batch, read, priors, strict=True)):
            if not rows and prior is None:
                continue
            where = prior if prior is not None else None
            gw = where.gateway_id if where is not None else rows[0].gateway_id
            evse = where.evse_id if where is not None else rows[0].evse_id
            connector = where.connector_id if where is not None else rows[0].connector_id
            oldest = where.started_at_ns if where is not None else rows[0].ts_ns
            newest = rows[-1].ts_ns if rows else (where.last_reading_at_ns if where else 0)
            since = oldest - int(SEQGAP_WINDOW_S) * NS
            gateways[gw] = min(gateways.get(gw, since), since)
            if not any(r.tx_event == "ended" for r in rows):
                newer_at[i] = len(checks)
                checks += queries.newer_reading_queries(c.charger_id, evse, connector, newest)
        gw_at = {}
        for gw, since in gateways.items():
            gw_at[gw] = len(checks)
            checks.append(queries.seqgaps_of_gateway_query(gw, since))
        answers = await self._client.execute_all(checks) if checks else []
        out: list[Session | None] = []
        for i, (c, rows, prior) in enumerate(zip(batch, read, priors, strict=True)):
            if not rows and prior is None:
                out.append(None)
                continue
            gw = prior.gateway_id if prior is not None else rows[0].gateway_id
            newer = i in newer_at and ends(answers[newer_at[i]], answers[newer_at[i] + 1])
            session = compute(
                c.charger_id,
                c.transaction_id,
                rows,
                now_ns=now,
                silence_ns=self._silence,
                newer_on_connector=newer,
                gaps=gaps_of(answers[gw_at[gw]]),
                prior=prior,
            )
            key = (c.charger_id, c.transaction_id)
            if session is not None and session.state == "active":
                self._carried[key] = session
            else:
                self._carried.pop(key, None)
            out.append(session)
        return out


def to_ns_delta(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1) * 1000


def _chunks(start: int, end: int) -> list[tuple[int, int]]:
    step = to_ns_delta(DISCOVERY_CHUNK)
    out = []
    a = start
    while True:
        b = min(a + step, end)
        out.append((a, b))
        if b >= end:
            return out
        a = b


def _add(into: dict[Key, Candidate], c: Candidate) -> None:
    key = (c.charger_id, c.transaction_id)
    held = into.get(key)
    if held is None:
        into[key] = c
    else:
        held.seen_from_ns = min(held.seen_from_ns, c.seen_from_ns)
        held.whole = held.whole or c.whole


def _discovered(
    answer: Iterable[Series], seen_from: int, into: dict[Key, Candidate], *, whole: bool = False
) -> None:
    """The (charger, transaction) pairs of a discovery answer."""
    for s in answer:
        charger = s.tags.get("charger_id")
        if not charger:
            continue
        for row in s.values:
            tx = row[1]
            if isinstance(tx, str) and tx:
                _add(into, Candidate(charger, tx, seen_from, whole))


def _first_value(answer: Sequence[Series]) -> int | None:
    for s in answer:
        for row in s.values:
            if row[1] is not None:
                return int(row[1])
    return None
