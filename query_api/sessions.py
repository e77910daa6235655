"""Charging sessions as the API reads them (docs/design.md#sessions): points of ``keep.sessions``
-> session documents, the fleet export's keyset paging and its CSV, and a session's power curve.

A session document has the keys of :data:`COLUMNS`; the store's ``""`` (not known) is ``null``,
``flags`` a list. Points whose ``state`` is ``superseded`` (a session written again at an
earlier start) are never read (:func:`telemetry_common.influxql.sessions_query`).

Paging (oldest first by ``started_at``): a position is the time ``t`` the next page starts at and
the sessions already returned at ``t`` (several sessions may start at the same instant): their
number ``n`` and, up to :data:`MAX_KEYS` of them, a 32-bit digest of each (charger,
transaction). The next page asks for ``limit + n + 1`` sessions from ``t`` on and leaves out the
ones returned before: by digest (robust to a session written at ``t`` meanwhile), or beyond
:data:`MAX_KEYS` the first ``n`` at ``t`` in InfluxDB's order. No session is repeated or skipped,
however many share a start.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from query_api import cursor
from query_api.readings import from_epoch_ns, tag_int
from query_api.resolution import WIDTHS, Resolution, ResolutionError, Retentions, aligned, choose
from query_api.rollups import combine
from query_api.timespec import Window, format_duration
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL, Series
from telemetry_common.influxql import SessionState
from telemetry_common.schema import TS_MAX, TS_MIN, format_ts

#: The keys of a session document, in the order of the CSV columns.
COLUMNS: Final = (
    "charger_id", "gateway_id", "evse_id", "connector_id", "transaction_id", "state",
    "started_at", "ended_at", "end_cause", "meter_start_wh", "meter_stop_wh", "energy_wh",
    "max_power_w", "duration_s", "stop_reason", "id_tag_hash", "readings", "flags",
)  # fmt: skip
#: Stored strings that mean "not known" when empty: null in a document.
_OPTIONAL_TEXT: Final = ("end_cause", "stop_reason", "id_tag_hash")
_FLOATS: Final = ("meter_start_wh", "meter_stop_wh", "energy_wh", "max_power_w", "duration_s")
#: A CSV cell that starts with one of these is read as a formula by spreadsheets: it is
#: prefixed with ``'`` (OWASP's CSV injection rule; ids may start with ``-``).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
#: Sessions at one start time whose digests a cursor carries (beyond: their number only).
MAX_KEYS: Final = 256
_DIGEST_HEX: Final = 8
_EPOCH_NS_MIN: Final = int((TS_MIN - from_epoch_ns(0)).total_seconds()) * 10**9
_EPOCH_NS_MAX: Final = int((TS_MAX - from_epoch_ns(0)).total_seconds()) * 10**9
#: Sessions per document of the CSV export's streamed answer.
CSV_CHUNK: Final = 5_000
#: Most rollup rows one power curve reads.
CURVE_ROLLUP_ROWS: Final = 100_000
_SECOND: Final = timedelta(seconds=1)

_SESSION_EXAMPLE: Final[dict[str, Any]] = {
    "charger_id": "gw-1-cp001",
    "gateway_id": "gw-1",
    "evse_id": 1,
    "connector_id": 1,
    "transaction_id": "1234",
    "state": "ended",
    "started_at": "2026-05-01T12:00:00.000Z",
    "ended_at": "2026-05-01T13:30:00.000Z",
    "end_cause": "stop",
    "meter_start_wh": 12345.0,
    "meter_stop_wh": 27345.0,
    "energy_wh": 15000.0,
    "max_power_w": 11040.0,
    "duration_s": 5400.0,
    "stop_reason": "EVDisconnected",
    "id_tag_hash": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "readings": 1081,
    "flags": [],
}


class Session(BaseModel):
    """One charging session (docs/design.md#sessions); unknown values are null."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SESSION_EXAMPLE]})

    charger_id: str
    gateway_id: str | None
    evse_id: int | None
    connector_id: int | None
    transaction_id: str
    state: SessionState
    started_at: str
    ended_at: str | None = Field(description="null while active")
    end_cause: str | None = Field(description="stop, next or silence; null while active")
    meter_start_wh: float | None
    meter_stop_wh: float | None = Field(description="while active: the newest register so far")
    energy_wh: float | None = Field(description="meter_stop_wh - meter_start_wh")
    max_power_w: float | None
    duration_s: float | None
    stop_reason: str | None
    id_tag_hash: str | None
    readings: int | None
    flags: list[str] = Field(
        description="register_backwards, seq_gap, energy_suspect, no_energy, connector_changed"
    )


class ChargerSessions(BaseModel):
    charger_id: str
    start: str
    end: str
    items: list[Session] = Field(description="newest first")
    truncated: bool = Field(description="more sessions started in the window than `limit`")


class SessionPage(BaseModel):
    start: str
    end: str
    items: list[Session] = Field(description="oldest first by started_at")
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` (same state and gateway_id) for the next page"
    )


class PowerPoint(BaseModel):
    ts: str = Field(description="the bucket's start")
    power_w: float = Field(description="mean power_w of the bucket's readings")


class SessionDetail(Session):
    resolution: Resolution = Field(description="where the power curve comes from")
    every: str = Field(description="the curve's bucket width")
    power: list[PowerPoint]


# --- points -> documents ---------------------------------------------------------------------


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def session_of(row: dict[str, Any]) -> dict[str, Any]:
    """A ``keep.sessions`` row (``time`` in ns, tags as columns) as a session document."""
    ended = row.get("ended_at")
    readings = row.get("readings")
    flags = row.get("flags")
    doc: dict[str, Any] = {
        "charger_id": row.get("charger_id"),
        "gateway_id": _text(row.get("gateway_id")),
        "evse_id": tag_int(row.get("evse_id")),
        "connector_id": tag_int(row.get("connector_id")),
        "transaction_id": row.get("transaction_id"),
        "state": row.get("state"),
        "started_at": format_ts(from_epoch_ns(int(row["time"]))),
        # Only an ended one's: on InfluxDB 2.x/3.x (no DELETE) a session that went on after it
        # ended by silence keeps its stale ended_at field (docs/design.md#sessions).
        "ended_at": (
            format_ts(from_epoch_ns(int(ended)))
            if isinstance(ended, int | float) and row.get("state") == "ended"
            else None
        ),
    }
    for key in _OPTIONAL_TEXT:
        doc[key] = _text(row.get(key))
    for key in _FLOATS:
        doc[key] = _float(row.get(key))
    count = _float(readings)
    doc["readings"] = int(count) if count is not None else None
    doc["flags"] = [f for f in flags.split(",") if f] if isinstance(flags, str) else []
    return {k: doc[k] for k in COLUMNS}


def sessions_of(series: list[Series]) -> list[dict[str, Any]]:
    """Every row of an answer as session documents."""
    return [session_of(row) for s in series for row in s.rows()]


# --- CSV -------------------------------------------------------------------------------------


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "flags":
        value = ";".join(value)
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_header() -> str:
    return _csv([list(COLUMNS)])


def csv_rows(items: list[dict[str, Any]]) -> str:
    """``items`` as CSV rows (RFC 4180, CRLF): ``null`` empty, ``flags`` joined by ``;``, text
    that a spreadsheet would take for a formula prefixed with ``'``."""
    return _csv([[_cell(k, item[k]) for k in COLUMNS] for item in items])


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


# --- paging ----------------------------------------------------------------------------------


def _digest(item: dict[str, Any]) -> str:
    key = f"{item['charger_id']}\x00{item['transaction_id']}".encode()
    return hashlib.sha256(key).hexdigest()[:_DIGEST_HEX]


def _ns(ts: datetime) -> int:
    delta = ts - from_epoch_ns(0)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _started_ns(item: dict[str, Any]) -> int:
    return _ns(datetime.fromisoformat(item["started_at"]))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page of the export starts: the window ``[start_ns, end_ns)``, the time ``t_ns``
    and the sessions already returned at it (``n``; their digests, None beyond MAX_KEYS)."""

    start_ns: int
    end_ns: int
    t_ns: int
    n: int = 0
    keys: tuple[str, ...] | None = ()

    @classmethod
    def first(cls, win: Window) -> Position:
        return cls(_ns(win.start), _ns(win.end), _ns(win.start))

    def encode(self, cursors: cursor.Cursors, query: str) -> str:
        body: dict[str, Any] = {"o": self.start_ns, "e": self.end_ns, "t": self.t_ns, "n": self.n}
        if self.keys is not None:
            body["d"] = "".join(self.keys)
        return cursors.encode("sessions", query, body)

    @classmethod
    def decode(
        cls, cursors: cursor.Cursors, text: str, query: str, max_range: timedelta
    ) -> Position:
        """The position of a cursor of ours for ``query``; :class:`cursor.CursorError` if it is
        not one, is damaged, or spans more than ``max_range``."""
        try:
            body = cursors.decode(text, "sessions", query)
            o, e, t, n, d = body["o"], body["e"], body["t"], body["n"], body.get("d")
        except KeyError as exc:
            raise cursor.CursorError("the cursor is damaged") from exc
        ints = all(
            isinstance(v, int) and not isinstance(v, bool) and _EPOCH_NS_MIN <= v <= _EPOCH_NS_MAX
            for v in (o, e, t)
        )
        if not ints or not o <= t < e or not isinstance(n, int) or not 0 <= n <= 10**9:
            raise cursor.CursorError("the cursor is damaged")
        keys: tuple[str, ...] | None = None
        if d is not None:
            if not isinstance(d, str) or len(d) != _DIGEST_HEX * n or n > MAX_KEYS:
                raise cursor.CursorError("the cursor is damaged")
            keys = tuple(d[i : i + _DIGEST_HEX] for i in range(0, len(d), _DIGEST_HEX))
        span = from_epoch_ns(e) - from_epoch_ns(o)
        if span > max_range:
            raise cursor.CursorError(
                f"the cursor's range {format_duration(span)} exceeds the maximum of "
                f"{format_duration(max_range)}"
            )
        return cls(o, e, t, n, keys)

    def after(self, page: list[dict[str, Any]]) -> Position:
        """The position after ``page`` (not empty), read from this one."""
        last = _started_ns(page[-1])
        at_last = [_digest(i) for i in page if _started_ns(i) == last]
        keys: tuple[str, ...] | None
        if last == self.t_ns:  # the page did not get past the instant it started at
            n = self.n + len(at_last)
            keys = None if self.keys is None else (*self.keys, *at_last)
        else:
            n, keys = len(at_last), tuple(at_last)
        return Position(self.start_ns, self.end_ns, last, n, keys if n <= MAX_KEYS else None)


@dataclass(frozen=True, slots=True)
class Export:
    """The filters of a fleet export."""

    state: str | None = None
    gateway_id: str | None = None

    def fingerprint(self) -> str:
        return cursor.fingerprint("sessions", self.state, self.gateway_id)


def _not_sent(at: Position) -> Callable[[dict[str, Any]], bool]:
    """Whether a session from ``at`` on was not on an earlier page: those at ``at``'s time that
    were are left out by digest, or beyond :data:`MAX_KEYS` the first ``n`` in InfluxDB's order."""
    seen = set(at.keys) if at.keys is not None else None
    skipped = 0

    def keep(item: dict[str, Any]) -> bool:
        nonlocal skipped
        if not at.n or _started_ns(item) != at.t_ns:
            return True
        if seen is not None:
            return _digest(item) not in seen
        if skipped < at.n:
            skipped += 1
            return False
        return True

    return keep


async def read_page(
    influx: InfluxQL, export: Export, at: Position, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """Up to ``limit`` sessions from ``at`` on, oldest first, and the position of the next page
    (None: this was the last)."""
    q = influxql.sessions_query(
        from_epoch_ns(at.t_ns), from_epoch_ns(at.end_ns), limit=limit + at.n + 1,
        gateway_id=export.gateway_id, state=export.state,
    )  # fmt: skip
    kept = list(filter(_not_sent(at), sessions_of(await influx.query(q))))
    page = kept[:limit]
    if len(kept) <= limit or not page:
        return page, None
    return page, at.after(page)


async def csv_chunks(influx: InfluxQL, export: Export, at: Position) -> AsyncIterator[str]:
    """The CSV export from ``at`` to the window's end: its header, then the sessions as
    InfluxDB streams them, one query for the whole window (``chunked``, :data:`CSV_CHUNK`
    sessions at a time): memory stays flat however many there are, and each session is read
    once. (Pages of ``LIMIT`` queries would each merge every charger's series again: 100,000
    sessions of 10,000 chargers took 44.6 s that way.) The first chunk is read when the
    iterator is first advanced, so the caller can answer a problem if InfluxDB fails then."""
    q = influxql.sessions_query(
        from_epoch_ns(at.t_ns), from_epoch_ns(at.end_ns), limit=None,
        gateway_id=export.gateway_id, state=export.state,
    )  # fmt: skip
    keep = _not_sent(at)
    header = csv_header()
    async for chunk in influx.query_stream(q, chunk_size=CSV_CHUNK):
        items = [item for item in sessions_of(chunk) if keep(item)]
        yield header + csv_rows(items)
        header = ""
    if header:
        yield header


# --- the power curve -------------------------------------------------------------------------


def _ceil(value: timedelta, unit: timedelta) -> timedelta:
    return max(unit, -(-value // unit) * unit)


def _buckets(start_ns: int, end_ns: int, step_ns: int) -> int:
    lo = start_ns - start_ns % step_ns
    return -(-(end_ns - lo) // step_ns)


def curve_step(start: datetime, end: datetime, points: int, unit: timedelta) -> timedelta:
    """The smallest bucket width, a multiple of ``unit``, whose epoch-aligned buckets cover
    ``[start, end)`` in at most ``points`` buckets."""
    span = end - start
    lo, hi = _ns(start), _ns(end)
    step = _ceil(span / points, unit)
    if _buckets(lo, hi, _ns(from_epoch_ns(0) + step)) > points and points > 1:
        step = _ceil(span / (points - 1), unit)
    while _buckets(lo, hi, _ns(from_epoch_ns(0) + step)) > points:
        step = _ceil(step * 2, unit)
    return step


def curve_resolution(
    start: datetime, end: datetime, points: int, *, now: datetime, rules: Retentions
) -> tuple[Resolution, timedelta]:
    """The store and bucket width of a power curve: raw readings while they still hold the
    session's start (exact), else the finest rollup that does, with whole rollup buckets."""
    last: ResolutionError | None = None
    for unit in (_SECOND, WIDTHS["1m"], WIDTHS["1h"]):
        step = curve_step(start, end, points, unit)
        try:
            return choose(
                start, end, now=now, step=step, forced=None, rules=rules, prefer_raw=True
            ), step
        except ResolutionError as exc:
            last = exc
    assert last is not None
    raise last


async def power_curve(
    influx: InfluxQL,
    session: dict[str, Any],
    *,
    points: int,
    now: datetime,
    rules: Retentions,
) -> tuple[Resolution, timedelta, list[dict[str, Any]]]:
    """(store, bucket width, ``[{ts, power_w}]``): ``mean(power_w)`` of the session's connector
    over ``[started_at, ended_at]`` (while active: up to now) in at most ``points`` buckets."""
    start = datetime.fromisoformat(session["started_at"])
    ended = session["ended_at"]
    end = datetime.fromisoformat(ended) + timedelta(milliseconds=1) if ended else now
    end = max(end, start + timedelta(milliseconds=1))
    resolution, step = curve_resolution(start, end, points, now=now, rules=rules)
    charger = session["charger_id"]
    evse, conn = session["evse_id"], session["connector_id"]
    connector = (evse, conn) if evse is not None and conn is not None else None
    if resolution == "raw":
        q = influxql.history_query(
            charger, ["power_w"], start, end, points, every=step, agg="mean", connector=connector
        )
        rows = [row for s in await influx.query(q) for row in s.rows()]
        curve = [
            {"ts": format_ts(from_epoch_ns(int(r["time"]))), "power_w": float(r["power_w"])}
            for r in rows
            if _float(r.get("power_w")) is not None
        ]
        return resolution, step, curve
    lo, hi = aligned(start, end, WIDTHS[resolution], from_epoch_ns(0))
    q = influxql.rollup_rows_query(
        charger, ["power_w"], lo, hi, CURVE_ROLLUP_ROWS, rollup=resolution,
        agg="mean", connector=connector,
    )  # fmt: skip
    series = await influx.query(q)
    columns = series[0].columns if series else ["time"]
    values = sorted((row for s in series for row in s.values), key=lambda r: r[0])
    step_ns = _ns(from_epoch_ns(0) + step)
    combined = combine(columns, values, ["power_w"], "mean", step_ns)
    curve = [
        {"ts": format_ts(from_epoch_ns(t)), "power_w": v["power_w"]}
        for t, v in combined
        if "power_w" in v and math.isfinite(v["power_w"])
    ][:points]
    return resolution, step, curve
