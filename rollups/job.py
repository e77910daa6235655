"""One pass of the rollup job, and a backfill of a range (docs/deploy.md#retention-and-rollups).

A pass first looks for late readings (the first pass, then one every ``LATE_CHECK_EVERY``): the
raw readings of the last ``LOOKBACK`` (from ``LOOKBACK`` before the previous check) that are
already rolled up (before ``done_until``) are counted, all series together, and compared with
the sum of the 1-minute rollups' ``count``; only when the totals differ are they compared per
series, and a series that differs has its minutes of that stretch and the hours they touch
recomputed. Then it rolls up the 1-minute buckets that ended ``SETTLE_S`` ago, from its saved
progress (``done_until``) on, a chunk at a time (progress stored after each, or every
``SAVE_EVERY`` of progress in the steady state), and every hour
those minutes complete. A recomputed bucket overwrites the same point (same measurement, tags
and time).

Both resolutions are computed from the raw readings (InfluxDB aggregates, per bucket and
series): the 1-hour mean from 1-minute means would need each key's own count (a key missing in
some readings), which the rollups do not carry; min, max and last would be exact either way,
and the job's own cost is one row per bucket and series in both cases.

``WRITE_PATH``: on InfluxDB 1.x the buckets are written by InfluxDB itself (``SELECT ... INTO``),
and a pass of the steady state (at most ``SAVE_EVERY`` of new minutes) is one request: the
survey and the ``INTO`` statements together. On 2.x/3.x (no ``INTO``) the rows are read and
written as line protocol (:mod:`rollups.lines`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rollups.lines import rollup_lines, state_line
from rollups.metrics import RollupMetrics
from rollups.settings import RollupsSettings, to_timedelta
from rollups.windows import HOUR, MINUTE, batches, ceil, chunks, floor, from_ns, steps, to_ns
from telemetry_common.influx_query import InfluxQLClient, Series
from telemetry_common.influx_write import InfluxWriter
from telemetry_common.influxql import (
    float_field_keys_query,
    late_marks_query,
    oldest_reading_query,
    qualified,
    rollup_query,
    rollup_state_query,
    series_counts_query,
    total_count_query,
)
from telemetry_common.storage import (
    META_FIELDS,
    ROLLUP_1H_MEASUREMENT,
    ROLLUP_1H_RP,
    ROLLUP_1M_MEASUREMENT,
    ROLLUP_1M_RP,
    ROLLUP_STATE_MEASUREMENT,
    TAG_KEYS,
)

#: The bridges stamp their late-reading marks with their own clocks: each pass reads back this
#: far before its watermark (a mark read twice is recomputed twice: harmless).
MARKS_MARGIN = timedelta(minutes=5)
#: Marks read per pass (a backlog of more is taken over the next passes).
MARKS_PER_PASS = 10_000

log = logging.getLogger(__name__)

SeriesKey = tuple[str, ...]
#: The progress is stored once it moved this far (and after every chunk of a long stretch): a
#: restart redoes at most these minutes, and a pass in the steady state spares a write.
SAVE_EVERY = timedelta(minutes=10)


@dataclass(frozen=True)
class Resolution:
    every: timedelta
    rp: str
    measurement: str
    label: str


MINUTES = Resolution(MINUTE, ROLLUP_1M_RP, ROLLUP_1M_MEASUREMENT, "1m")
HOURS = Resolution(HOUR, ROLLUP_1H_RP, ROLLUP_1H_MEASUREMENT, "1h")


@dataclass
class PassResult:
    """What a pass (or a backfill) did."""

    written: dict[str, int] = field(default_factory=lambda: {"1m": 0, "1h": 0})
    late_series: int = 0
    #: Ranges recomputed because a bridge marked readings stored late in them.
    late_marked: int = 0
    done_until: datetime | None = None
    caught_up: bool = False


class RollupJob:
    """Rolls up raw readings through an InfluxQL client and a line-protocol writer."""

    def __init__(
        self,
        settings: RollupsSettings,
        client: InfluxQLClient,
        writer: InfluxWriter,
        metrics: RollupMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._s = settings
        self._db = settings.influx.database
        self._client = client
        self._writer = writer
        self.metrics = metrics or RollupMetrics()
        self._now = now
        lookback = to_timedelta(settings.lookback)
        assert lookback is not None
        self._lookback = lookback
        self._chunk = to_timedelta(settings.chunk) or timedelta(days=1)
        self._late_every = to_timedelta(settings.late_check_every) or MINUTE
        self._checked: datetime | None = None  # the end of the last pass that checked
        self._done: datetime | None = None
        self._saved: datetime | None = None
        self._marks_until: datetime | None = None  # the newest late-reading mark taken
        self._marks_seen: set[tuple[int, str, str]] = set()  # those within MARKS_MARGIN
        self._into: bool | None = None  # decided at the first pass (WRITE_PATH)
        self._fields: list[str] | None = None  # the value keys the previous pass found

    # -- progress ---------------------------------------------------------------------------
    async def load_progress(self) -> datetime | None:
        """The end of the 1-minute buckets rolled up so far (None: nothing yet)."""
        return await self._load_state("done_until_ns")

    async def save_progress(self, done_until: datetime) -> None:
        """Store ``done_until`` (and keep it for the next pass)."""
        self._done = self._saved = done_until
        await self._save_state("done_until_ns", done_until)

    async def _load_state(self, field: str) -> datetime | None:
        q = rollup_state_query(self._db, ROLLUP_1H_RP, ROLLUP_STATE_MEASUREMENT, field)
        for s in await self._client.execute(q):
            for row in s.rows():
                if row.get(field) is not None:
                    return from_ns(int(row[field]))
        return None

    async def _save_state(self, field: str, value: datetime) -> None:
        # One point per day, overwritten during the day; the newest is the last.
        at = floor(value, timedelta(days=1))
        line = state_line(ROLLUP_STATE_MEASUREMENT, to_ns(value), to_ns(at), field)
        await self._writer.write([line], rp=ROLLUP_1H_RP)

    # -- late readings the bridges marked ---------------------------------------------------
    async def _marks_statement(self) -> str | None:
        """The query of the marks of readings the bridges stored late (older than
        ``LATE_AFTER_S`` when stored, so behind LOOKBACK: a backlog drained, a dead letter
        replayed) since the watermark; None at the very first pass, which rolls up everything
        stored so far (the watermark starts there)."""
        since = self._marks_until
        if since is None:
            since = await self._load_state("marks_until_ns")
        if since is None:
            since = self._now() - MARKS_MARGIN
            self._marks_until = since
            await self._save_state("marks_until_ns", since)
            return None
        self._marks_until = since
        return late_marks_query(since - MARKS_MARGIN, MARKS_PER_PASS)

    async def _take_marks(self, series: list[Series], result: PassResult) -> None:
        """Recompute the ranges the marks name, then move the watermark past them (stored
        beside the progress)."""
        since = self._marks_until
        assert since is not None
        spans: list[tuple[datetime, datetime]] = []
        newest = since
        seen: set[tuple[int, str, str]] = set()
        for s in series:
            for row in s.rows():
                t = int(row["time"])
                key = (t, str(row.get("bridge")), str(row.get("gateway_id")))
                seen.add(key)
                if key in self._marks_seen or row.get("first") is None:
                    continue
                first, last = from_ns(int(row["first"])), from_ns(int(row["last"]))
                spans.append((floor(first, MINUTE), floor(last, MINUTE) + MINUTE))
                newest = max(newest, from_ns(t))
        margin_ns = to_ns(newest - MARKS_MARGIN)
        self._marks_seen = {k for k in self._marks_seen | seen if k[0] > margin_ns}
        for a, b in _merged(spans):
            log.info("late readings marked in %s..%s: recomputing", a.isoformat(), b.isoformat())
            done = await self.backfill(a, b)
            for label, n in done.written.items():
                result.written[label] += n
            result.late_marked += 1
        if newest > since:
            self._marks_until = newest
            await self._save_state("marks_until_ns", newest)

    # -- a pass -----------------------------------------------------------------------------
    async def run_pass(self) -> PassResult:
        """Roll up what completed since the last pass, what came late within LOOKBACK, and
        what the bridges marked as stored late."""
        started = time.monotonic()
        result = PassResult()
        end = floor(self._now() - timedelta(seconds=self._s.settle_s), MINUTE)
        # Read once per process (a restart resumes from it), then kept: this job is its writer.
        done = self._done if self._done is not None else await self.load_progress()
        if done is None:
            oldest = await self._oldest()
            if oldest is None:
                log.info("no raw readings yet: nothing to roll up")
                result.caught_up = True
                self._finish(result, started, end)
                return result
            done = floor(oldest, MINUTE)
            log.info("first pass: rolling up from the oldest raw reading, %s", done.isoformat())
        late_from = self._late_from(end)
        # The marks are read with the LOOKBACK check (in the steady pass's one request).
        marks = await self._marks_statement() if late_from is not None else None
        into = await self._uses_into()
        if into and self._fields is not None and done < end and end - done <= SAVE_EVERY:
            # The steady state on InfluxDB 1.x: the survey and the new minutes (and the hour
            # they complete) in one request; InfluxDB writes the buckets itself.
            await self._survey_and_roll(late_from, done, end, result, marks)
            self._checked = end if late_from is not None else self._checked
            done = self._done = end
            if self._saved is None or end - self._saved >= SAVE_EVERY:
                await self.save_progress(end)
            result.done_until = done
            result.caught_up = True
            self._finish(result, started, end)
            return result
        if marks:
            await self._take_marks(await self._client.execute(marks), result)
        fields, totals = await self._survey(late_from or end, min(done, end))
        if late_from is not None and totals is not None and totals[0] != totals[1]:
            await self._late(late_from, min(done, end), fields, result)
        self._checked = end if late_from is not None else self._checked
        for a, b in chunks(done, end, self._chunk):
            await self._roll(MINUTES, a, b, fields, result)
            # The hours these minutes complete; an hour still open is done by a later pass.
            await self._roll(HOURS, floor(a, HOUR), floor(b, HOUR), fields, result)
            if self._saved is None or b - self._saved >= SAVE_EVERY:
                await self.save_progress(b)
            done = self._done = b
            if b - a > HOUR:  # catching up (first pass, a job that was down): show progress
                log.info("rolled up to %s", b.isoformat())
        result.done_until = done
        result.caught_up = done >= end
        self._finish(result, started, end)
        return result

    async def backfill(self, start: datetime, end: datetime) -> PassResult:
        """Recompute every 1-minute and 1-hour bucket touching ``[start, end)`` (complete ones
        only); the progress of the pass is left alone."""
        result = PassResult()
        limit = floor(self._now() - timedelta(seconds=self._s.settle_s), MINUTE)
        a, b = floor(start, MINUTE), min(ceil(end, MINUTE), limit)
        fields = await self._value_keys()
        await self._uses_into()
        for ca, cb in chunks(a, b, self._chunk):
            await self._roll(MINUTES, ca, cb, fields, result)
        hours_end = ceil(b, HOUR) if ceil(b, HOUR) <= limit else floor(b, HOUR)
        for ca, cb in chunks(floor(a, HOUR), hours_end, self._chunk):
            await self._roll(HOURS, ca, cb, fields, result)
        log.info(
            "backfill %s..%s: %d 1-minute and %d 1-hour points written",
            a.isoformat(),
            b.isoformat(),
            result.written["1m"],
            result.written["1h"],
        )
        return result

    def _finish(self, result: PassResult, started: float, end: datetime) -> None:
        m = self.metrics
        m.run_seconds.observe(time.monotonic() - started)
        if result.done_until is not None:
            m.lag_seconds.set((self._now() - result.done_until).total_seconds())
        m.last_success.set(time.time())

    # -- late readings ----------------------------------------------------------------------
    def _late_from(self, end: datetime) -> datetime | None:
        """Where this pass's check for late readings starts, or None: a pass checks when
        LATE_CHECK_EVERY passed since the last check (the first pass of a process always),
        from LOOKBACK before that last check, so no minute leaves the checked stretch
        between two checks."""
        last = self._checked
        if last is not None and end - last < self._late_every:
            return None
        return floor(min(end, last or end) - self._lookback, MINUTE)

    async def _late(
        self, start: datetime, end: datetime, fields: Sequence[str], result: PassResult
    ) -> None:
        """Recompute the series whose raw count in ``[start, end)`` differs from the rollups'
        (called when the totals of all series differ)."""
        minutes = qualified(self._db, MINUTES.rp, MINUTES.measurement)
        raw = await self._series_counts(start, end, None)
        rolled = await self._series_counts(start, end, minutes)
        changed = {k: n for k, n in raw.items() if rolled.get(k) != n}
        if not changed:
            return
        per_charger = _per_charger(changed)
        log.info(
            "late readings in %d series of %d chargers since %s: recomputing",
            len(changed),
            len(per_charger),
            start.isoformat(),
        )
        result.late_series += len(changed)
        self.metrics.late_series.inc(len(changed))
        await self._roll(MINUTES, start, end, fields, result, per_charger)
        await self._roll(HOURS, floor(start, HOUR), floor(end, HOUR), fields, result, per_charger)

    # -- rolling up -------------------------------------------------------------------------
    async def _roll(
        self,
        res: Resolution,
        start: datetime,
        end: datetime,
        fields: Sequence[str],
        result: PassResult,
        per_charger: Mapping[str, int] | None = None,
    ) -> None:
        """Write ``res`` buckets in ``[start, end)`` of the series with readings there (or of
        ``per_charger``'s chargers), in queries of bounded chargers and rows."""
        start = max(start, self._oldest_writable(res))
        if start >= end:
            return
        groups: list[list[str] | None]
        if per_charger is None:
            per_charger = _per_charger(await self._series_counts(start, end, None))
            if not per_charger:
                return
            total = sum(per_charger.values())
            # Every series with readings there fits a query's rows bucket by bucket: no charger
            # filter (InfluxDB plans a long OR of tag values slower than the whole stretch).
            groups = [None] if total <= self._s.query_max_rows else []
        else:
            groups = []
        if not groups:
            groups = list(batches(per_charger, self._s.series_per_query))
        for ids in groups:
            width = sum(per_charger[c] for c in (per_charger if ids is None else ids))
            for a, b in steps(start, end, res.every, width, self._s.query_max_rows):
                if self._into:
                    into = qualified(self._db, res.rp, res.measurement)
                    q = rollup_query(fields, a, b, res.every, ids, into=into)
                    self._count(res, result, _written(await self._client.execute(q)))
                    continue
                answer = await self._client.execute(rollup_query(fields, a, b, res.every, ids))
                lines = list(rollup_lines(res.measurement, answer))
                if lines:
                    await self._writer.write(lines, rp=res.rp)
                self._count(res, result, len(lines))

    def _count(self, res: Resolution, result: PassResult, written: int) -> None:
        result.written[res.label] += written
        self.metrics.buckets_written.labels(res.label).inc(written)

    def _into_statements(
        self, fields: Sequence[str], start: datetime, end: datetime
    ) -> list[tuple[Resolution, str]]:
        """``SELECT ... INTO`` of the minutes of ``[start, end)`` and the hours they complete
        (all series; buckets a rollup policy would refuse left out)."""
        out = []
        for res, a, b in (
            (MINUTES, start, end),
            (HOURS, floor(start, HOUR), floor(end, HOUR)),
        ):
            a = max(a, self._oldest_writable(res))
            if a < b:
                into = qualified(self._db, res.rp, res.measurement)
                out.append((res, rollup_query(fields, a, b, res.every, into=into)))
        return out

    async def _survey_and_roll(
        self,
        late_from: datetime | None,
        done: datetime,
        end: datetime,
        result: PassResult,
        marks: str | None = None,
    ) -> None:
        """A pass of a short stretch ``[done, end)`` on the INTO path, in one request: the
        survey (value keys, the totals of ``[late_from, done)``) and the buckets, written with
        the value keys of the previous pass; when the keys changed (a new one), the buckets
        are written again with them (a point written again keeps its other fields)."""
        assert self._fields is not None
        survey = self._survey_statements(late_from or done, done)
        rolls = self._into_statements(self._fields, done, end)
        answers = await self._client.execute_all(
            [*survey, *(q for _, q in rolls), *([marks] if marks else [])]
        )
        if marks:
            await self._take_marks(answers.pop(), result)
        fields, totals = _survey_answer(answers[: len(survey)])
        if fields != self._fields:
            rolls = self._into_statements(fields, done, end)
            answers = answers[: len(survey)] + await self._client.execute_all([q for _, q in rolls])
        self._fields = fields
        for (res, _), answer in zip(rolls, answers[len(survey) :], strict=True):
            self._count(res, result, _written(answer))
        if late_from is not None and totals is not None and totals[0] != totals[1]:
            await self._late(late_from, done, fields, result)

    async def _survey(
        self, start: datetime, end: datetime
    ) -> tuple[list[str], tuple[int, int] | None]:
        """In one request: the value keys, and (when ``start < end``) the readings of
        ``[start, end)`` of all series together, raw and as the 1-minute rollups count them."""
        answers = await self._client.execute_all(self._survey_statements(start, end))
        fields, totals = _survey_answer(answers)
        self._fields = fields
        return fields, totals

    def _survey_statements(self, start: datetime, end: datetime) -> list[str]:
        """SHOW FIELD KEYS, and when ``start < end`` the raw and the 1-minute rollups' totals
        of ``[start, end)``."""
        statements = [float_field_keys_query()]
        if start < end:
            minutes = qualified(self._db, MINUTES.rp, MINUTES.measurement)
            statements += [
                total_count_query(start, end),
                total_count_query(start, end, source=minutes),
            ]
        return statements

    def _oldest_writable(self, res: Resolution) -> datetime:
        """The first bucket of ``res`` InfluxDB still takes: one older than its retention
        policy's duration would be refused (an hour of margin)."""
        keep = to_timedelta(
            self._s.rollup_1m_retention if res is MINUTES else self._s.rollup_1h_retention
        )
        if keep is None:
            return datetime.min.replace(tzinfo=UTC)
        return ceil(self._now() - keep + HOUR, res.every)

    async def _series_counts(
        self, start: datetime, end: datetime, source: str | None
    ) -> dict[SeriesKey, int]:
        """Readings per series in ``[start, end)``: raw (``source`` None) or a rollup's sum."""
        out: dict[SeriesKey, int] = {}
        page = self._s.query_max_rows
        offset = 0
        while True:
            q = series_counts_query(start, end, limit=page, offset=offset, source=source)
            answer = await self._client.execute(q)
            for s in answer:
                n = sum(int(row[1] or 0) for row in s.values)
                out[tuple(s.tags.get(t, "") for t in TAG_KEYS)] = n
            if len(answer) < page:
                return out
            offset += page

    async def _value_keys(self) -> list[str]:
        """The raw readings' value keys (float fields)."""
        return _float_keys(await self._client.execute(float_field_keys_query()))

    async def _uses_into(self) -> bool:
        """Whether InfluxDB writes the buckets itself (``SELECT ... INTO``): WRITE_PATH, and
        for ``auto`` the version InfluxDB announces (asked once)."""
        if self._into is None:
            path = self._s.write_path
            if path == "auto":
                version = None
                if self._s.influx.api == "v1":
                    version = await self._client.server_version()
                path = "into" if version is not None and _is_v1(version) else "lines"
                log.info("InfluxDB %s: WRITE_PATH auto is %s", version or "2.x/3.x", path)
            log.info("rollup buckets written by the %s path", path)
            self._into = path == "into"
        return self._into

    async def _oldest(self) -> datetime | None:
        for s in await self._client.execute(oldest_reading_query()):
            for row in s.values:
                return from_ns(int(row[0]))
        return None


def _per_charger(series: Mapping[SeriesKey, int]) -> dict[str, int]:
    """How many series each charger has among ``series`` (keys in TAG_KEYS order)."""
    out: dict[str, int] = defaultdict(int)
    index = TAG_KEYS.index("charger_id")
    for key in series:
        out[key[index]] += 1
    return dict(out)


def _survey_answer(
    answers: Sequence[Sequence[Series]],
) -> tuple[list[str], tuple[int, int] | None]:
    """The value keys and (raw, rolled-up) totals of the answers to ``_survey_statements``."""
    fields = _float_keys(answers[0])
    if len(answers) == 1:
        return fields, None

    def total(answer: Sequence[Series]) -> int:
        return sum(int(row[1] or 0) for s in answer for row in s.values)

    return fields, (total(answers[1]), total(answers[2]))


def _written(answer: Sequence[Series]) -> int:
    """The points a ``SELECT ... INTO`` wrote (its ``result`` series' ``written``)."""
    return sum(
        int(row[s.columns.index("written")] or 0)
        for s in answer
        if "written" in s.columns
        for row in s.values
    )


def _is_v1(version: str) -> bool:
    """Whether a ``/ping`` version (``1.8.10``, ``v2.7.4``) is InfluxDB 1.x's."""
    return version.removeprefix("v").startswith("1.")


def _float_keys(answer: Sequence[Series]) -> list[str]:
    """The value keys (float fields, not the meta fields) of a SHOW FIELD KEYS answer."""
    keys = {
        str(name)
        for s in answer
        for name, kind in s.values
        if kind == "float" and name not in META_FIELDS
    }
    return sorted(keys)


def _merged(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Overlapping or touching ranges joined, oldest first."""
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
