"""The only place InfluxQL text is built. Pure functions; every input is checked, then quoted.

Identifiers are double-quoted and string literals single-quoted with InfluxQL's own escapes
(``\\``, the quote, newline), as ``influxql.QuoteIdent``/``QuoteString`` do. Ids are re-checked
against the allow-list and field names against the value-key rule of the reading schema, so a
hostile value is refused before it is quoted; quoting is the second line of defence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

from pydantic import TypeAdapter, ValidationError

from telemetry_common.deadletters import REASON_RE
from telemetry_common.errors import TelemetryError
from telemetry_common.ids import check_id
from telemetry_common.schema import EPOCH_SHAPE, MAX_SEQ, TS_MAX, TS_MIN, Status, ValueKey
from telemetry_common.storage import (
    ALARM_MEASUREMENT,
    BINDINGS_MEASUREMENT,
    CHARGER_MEASUREMENT,
    DEADLETTER_MEASUREMENT,
    KEEP_RP,
    MEASUREMENT,
    NEWEST_CHARGER_MEASUREMENT,
    NEWEST_GATEWAY_MEASUREMENT,
    RESERVED_VALUE_KEYS,
    ROLLUP_1H_MEASUREMENT,
    ROLLUP_1H_RP,
    ROLLUP_1M_MEASUREMENT,
    ROLLUP_1M_RP,
    ROLLUP_LATE_MEASUREMENT,
    SEQGAP_MEASUREMENT,
    SESSION_MEASUREMENT,
    TAG_KEYS,
)
from telemetry_common.topics import ALARM_KINDS, ALARM_SUBJECT

Aggregate = Literal["mean", "min", "max", "last", "count", "sum"]
AGGREGATES: Final[tuple[str, ...]] = get_args(Aggregate)

_VALUE_KEY: Final = TypeAdapter(ValueKey)
_EPOCH: Final = re.compile(EPOCH_SHAPE)
_IDENT_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n"})
_DURATION_UNITS: Final = (
    ("w", 604_800_000_000),
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("u", 1),
)


class QueryBuildError(TelemetryError, ValueError):
    """A query that must not be built (carries the offending parameter and value)."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        super().__init__(f"{parameter}={value!r}: {problem}")
        self.parameter = parameter
        self.value = value
        self.problem = problem


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted InfluxQL identifier."""
    return '"' + name.translate(_IDENT_ESCAPES) + '"'


def quote_string(value: str) -> str:
    """``value`` as a single-quoted InfluxQL string literal."""
    return "'" + value.translate(_STRING_ESCAPES) + "'"


def check_field(name: str) -> str:
    """Return ``name`` if it is a reading value key (not a tag or meta field), else raise."""
    try:
        _VALUE_KEY.validate_python(name, strict=True)
    except ValidationError as exc:
        raise QueryBuildError("fields", name, "not a value key (^[a-z][a-z0-9_]{0,62}$)") from exc
    if name in RESERVED_VALUE_KEYS:
        raise QueryBuildError("fields", name, "a tag, time or meta field, not a reading value")
    return name


def time_literal(ts: datetime) -> str:
    """An aware ``ts`` as a quoted RFC 3339 UTC literal (microseconds, ``Z``)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise QueryBuildError("time", ts, "a timezone-aware datetime is required")
    if not TS_MIN <= ts <= TS_MAX:
        raise QueryBuildError("time", ts, "outside the range InfluxDB can store")
    return quote_string(ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def duration_literal(every: timedelta) -> str:
    """A positive ``every`` as an InfluxQL duration literal in its largest exact unit."""
    micros = every // timedelta(microseconds=1)
    if micros <= 0:
        raise QueryBuildError("every", every, "must be positive")
    for unit, size in _DURATION_UNITS:
        if micros % size == 0:
            return f"{micros // size}{unit}"
    raise AssertionError("unreachable: 1 microsecond divides every duration")  # pragma: no cover


def _charger_filter(charger_id: str) -> str:
    return f"{quote_ident('charger_id')} = {quote_string(check_id('charger id', charger_id))}"


def _connector_filter(connector: tuple[int, int] | None) -> str:
    """`` AND evse_id = 'E' AND connector_id = 'C'`` for ``connector`` (evse, connector); ""
    for None (every connector)."""
    if connector is None:
        return ""
    out = ""
    for name, value in zip(("evse_id", "connector_id"), connector, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise QueryBuildError(name, value, "must be an integer 0..255")
        out += f" AND {quote_ident(name)} = {quote_string(str(value))}"
    return out


def latest_per_charger_query(charger_ids: Sequence[str]) -> str:
    """The newest point of each of ``charger_ids`` (over all its connectors), with every tag and
    field: one series per charger (tagged ``charger_id``), in one query."""
    if not charger_ids:
        raise QueryBuildError("charger_ids", charger_ids, "give at least one charger id")
    match = " OR ".join(_charger_filter(c) for c in dict.fromkeys(charger_ids))
    return (
        f"SELECT * FROM {quote_ident(MEASUREMENT)} WHERE {match} "
        f"GROUP BY {quote_ident('charger_id')} ORDER BY time DESC LIMIT 1"
    )


def history_query(
    charger_id: str,
    fields: list[str] | None,
    start: datetime,
    end: datetime,
    limit: int,
    every: timedelta | None = None,
    agg: Aggregate | None = None,
    *,
    connector: tuple[int, int] | None = None,
) -> str:
    """Points of one charger in ``[start, end)``, oldest first, at most ``limit`` of them; of one
    ``connector`` (evse, connector) only when given (a session's power curve).

    Raw (``every`` is None): ``fields`` (or all fields) with ``seq``, ``status`` and the tags.
    Downsampled: ``agg`` of each field per ``every`` bucket over all connectors, empty buckets
    left out; columns are named after the fields (with ``fields=None``, InfluxDB names them
    ``{agg}_{field}``).
    """
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise QueryBuildError("limit", limit, "must be a positive integer")
    if fields is not None:
        if not fields:
            raise QueryBuildError("fields", fields, "give at least one field or leave it out")
        fields = list(dict.fromkeys(check_field(f) for f in fields))
    where = (
        f"{_charger_filter(charger_id)}{_connector_filter(connector)} "
        f"AND time >= {time_literal(start)} AND time < {time_literal(end)}"
    )
    if start >= end:
        raise QueryBuildError("start", start, "must be before end")
    source = quote_ident(MEASUREMENT)
    if every is None:
        if agg is not None:
            raise QueryBuildError("agg", agg, "needs every")
        if fields is None:
            columns = "*"
        else:
            names = ["status", "seq", *fields, "gateway_id", "evse_id", "connector_id"]
            columns = ", ".join(quote_ident(n) for n in names)
        return f"SELECT {columns} FROM {source} WHERE {where} ORDER BY time ASC LIMIT {limit}"
    if agg not in AGGREGATES:
        raise QueryBuildError("agg", agg, f"must be one of {', '.join(AGGREGATES)}")
    if fields is None:
        columns = f"{agg}(*)"
    else:
        columns = ", ".join(f"{agg}({quote_ident(f)}) AS {quote_ident(f)}" for f in fields)
    return (
        f"SELECT {columns} FROM {source} WHERE {where} "
        f"GROUP BY time({duration_literal(every)}) fill(none) ORDER BY time ASC LIMIT {limit}"
    )


def _time_range(since: datetime | None, until: datetime | None) -> list[str]:
    """The conditions of ``since <= time < until`` (either bound may be absent)."""
    where = []
    if since is not None:
        where.append(f"time >= {time_literal(since)}")
    if until is not None:
        where.append(f"time < {time_literal(until)}")
    return where


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def newest_per_charger_query(since: datetime | None = None, until: datetime | None = None) -> str:
    """Per (charger, gateway): the time and ``seq`` of the newest stored point, among the points
    in ``[since, until)`` (all time when both are None: a scan of every shard, which start-up
    and the API's sweeps no longer do; they read :func:`newest_chargers_state_query` and a
    recent window)."""
    return (
        f"SELECT last({quote_ident('seq')}) AS {quote_ident('seq')} "
        f"FROM {quote_ident(MEASUREMENT)}{_where(_time_range(since, until))} "
        f"GROUP BY {quote_ident('charger_id')}, {quote_ident('gateway_id')}"
    )


def newest_chargers_state_query() -> str:
    """Every point of the newest-stored state per charger (one per charger and bridge: tags
    bridge, charger_id; fields ts, seq, gateway_id)."""
    return f"SELECT * FROM {quote_ident(KEEP_RP)}.{quote_ident(NEWEST_CHARGER_MEASUREMENT)}"


def newest_gateways_state_query() -> str:
    """Every point of the newest-stored state per gateway epoch (one per gateway, epoch and
    bridge: tags bridge, gateway_id, epoch; fields newest_ts, high, high_ts)."""
    return f"SELECT * FROM {quote_ident(KEEP_RP)}.{quote_ident(NEWEST_GATEWAY_MEASUREMENT)}"


def _epoch_literal(epoch: str) -> str:
    if not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        raise QueryBuildError("epoch", epoch, "not an outbox epoch (16 lowercase hex digits)")
    return quote_string(epoch)


def newest_seq_per_gateway_query(
    since: datetime | None = None, until: datetime | None = None
) -> str:
    """Per gateway: its newest stored point (by time) in ``[since, until)`` with its ``seq`` and
    ``epoch`` (null when it has none): the epoch a gateway sends with now (warm-up of gap
    tracking)."""
    return (
        f"SELECT last({quote_ident('seq')}) AS {quote_ident('seq')}, {quote_ident('epoch')} "
        f"FROM {quote_ident(MEASUREMENT)}{_where(_time_range(since, until))} "
        f"GROUP BY {quote_ident('gateway_id')}"
    )


def highest_seq_per_gateway_query(
    since: datetime | None = None, until: datetime | None = None
) -> str:
    """Per gateway: the highest stored ``seq`` up to ``MAX_SEQ`` in ``[since, until)``, its time
    and its ``epoch`` (seeds gap tracking at start; a larger seq stored before it was refused is
    ignored)."""
    where = [f"{quote_ident('seq')} <= {MAX_SEQ}", *_time_range(since, until)]
    return (
        f"SELECT max({quote_ident('seq')}) AS {quote_ident('seq')}, {quote_ident('epoch')} "
        f"FROM {quote_ident(MEASUREMENT)}{_where(where)} "
        f"GROUP BY {quote_ident('gateway_id')}"
    )


def highest_seq_of_epoch_query(
    gateway_id: str, epoch: str, since: datetime | None = None, until: datetime | None = None
) -> str:
    """The highest stored ``seq`` (up to ``MAX_SEQ``) of ``gateway_id``'s ``epoch`` in
    ``[since, until)``, and its time."""
    where = [
        f"{quote_ident('gateway_id')} = {quote_string(check_id('gateway id', gateway_id))}",
        f"{quote_ident('epoch')} = {_epoch_literal(epoch)}",
        f"{quote_ident('seq')} <= {MAX_SEQ}",
        *_time_range(since, until),
    ]
    return (
        f"SELECT max({quote_ident('seq')}) AS {quote_ident('seq')} "
        f"FROM {quote_ident(MEASUREMENT)}{_where(where)}"
    )


def count_seq_range_query(
    gateway_id: str,
    first: int,
    last: int,
    start: datetime,
    end: datetime,
    epoch: str | None = None,
) -> str:
    """How many points of ``gateway_id`` with ``first <= seq <= last`` lie in [start, end];
    with ``epoch``, only that epoch's."""
    of_epoch = f"AND {quote_ident('epoch')} = {_epoch_literal(epoch)} " if epoch is not None else ""
    return (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {quote_ident('gateway_id')} = {quote_string(check_id('gateway id', gateway_id))} "
        f"AND {quote_ident('seq')} >= {int(first)} AND {quote_ident('seq')} <= {int(last)} "
        f"{of_epoch}AND time >= {time_literal(start)} AND time <= {time_literal(end)}"
    )


# --- query API: statistics, fleet counts, ingest seq, readiness ------------------------------

#: The statistics of ``stats_query``, in column order; each column is ``{stat}_{field}``.
STATS: Final = ("count", "mean", "median", "stddev", "min", "max")


def _window(start: datetime, end: datetime) -> str:
    if start >= end:
        raise QueryBuildError("start", start, "must be before end")
    return f"time >= {time_literal(start)} AND time < {time_literal(end)}"


def stats_query(charger_id: str, fields: list[str] | None, start: datetime, end: datetime) -> str:
    """count, mean, median, stddev (sample), min and max of each field of one charger over
    ``[start, end)`` in one row; columns ``{stat}_{field}`` (with ``fields=None`` every field,
    ``seq`` and ``status`` included: the caller drops them)."""
    if fields is None:
        columns = ", ".join(f"{stat}(*)" for stat in STATS)
    else:
        if not fields:
            raise QueryBuildError("fields", fields, "give at least one field or leave it out")
        names = list(dict.fromkeys(check_field(f) for f in fields))
        columns = ", ".join(
            f"{stat}({quote_ident(f)}) AS {quote_ident(f'{stat}_{f}')}"
            for f in names
            for stat in STATS
        )
    return (
        f"SELECT {columns} FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {_charger_filter(charger_id)} AND {_window(start, end)}"
    )


def count_readings_query(start: datetime, end: datetime, status: str | None = None) -> str:
    """How many readings (of every charger) lie in ``[start, end)``, optionally only those with
    ``status`` (one of the OCPP statuses of the schema)."""
    where = _window(start, end)
    if status is not None:
        if status not in get_args(Status):
            raise QueryBuildError("status", status, "not an OCPP connector status")
        where += f" AND {quote_ident('status')} = {quote_string(status)}"
    return f"SELECT count({quote_ident('seq')}) FROM {quote_ident(MEASUREMENT)} WHERE {where}"


def gateway_highest_seq_query(gateway_id: str, since: datetime | None = None) -> str:
    """The highest stored ``seq`` of one gateway among its points since ``since`` (all time when
    None) (the API numbers HTTP-ingested readings on)."""
    where = [
        f"{quote_ident('gateway_id')} = {quote_string(check_id('gateway id', gateway_id))}",
        *_time_range(since, None),
    ]
    return (
        f"SELECT max({quote_ident('seq')}) AS {quote_ident('seq')} "
        f"FROM {quote_ident(MEASUREMENT)}{_where(where)}"
    )


def gateway_state_query(gateway_id: str) -> str:
    """The newest-stored state of one gateway's epochs (every bridge's point)."""
    return (
        f"{newest_gateways_state_query()} WHERE "
        f"{quote_ident('gateway_id')} = {quote_string(check_id('gateway id', gateway_id))}"
    )


def bindings_query(since: datetime | None = None, charger_id: str | None = None) -> str:
    """Per charger: its newest binding change (``gateway_id``, ``""`` = unbound, ``previous``,
    ``changed_by``) in the bindings store, among the changes after ``since`` (all when None), of
    one charger when ``charger_id`` is given. One row per charger named: the bridges load the
    whole store at start, then refresh with ``since`` = their last refresh (less a margin)."""
    where = []
    if since is not None:
        where.append(f"time > {time_literal(since)}")
    if charger_id is not None:
        where.append(f"{_charger_filter(charger_id)}")
    return (
        f"SELECT last({quote_ident('gateway_id')}) AS {quote_ident('gateway_id')}, "
        f"{quote_ident('previous')}, {quote_ident('changed_by')} "
        f"FROM {quote_ident(KEEP_RP)}.{quote_ident(BINDINGS_MEASUREMENT)}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" GROUP BY {quote_ident('charger_id')}"
    )


# --- rollups (docs/design.md#rollups): history and statistics over 1-minute / 1-hour buckets --

Rollup = Literal["1m", "1h"]
ROLLUPS: Final[tuple[str, ...]] = get_args(Rollup)
_ROLLUP_SOURCES: Final = {
    "1m": (ROLLUP_1M_RP, ROLLUP_1M_MEASUREMENT),
    "1h": (ROLLUP_1H_RP, ROLLUP_1H_MEASUREMENT),
}
#: The statistics ``rollup_stats_query`` can give exactly (columns ``{stat}_{field}``); median
#: and standard deviation cannot be derived from rollups.
ROLLUP_STATS: Final = ("count", "mean", "min", "max")


def rollup_source(rollup: Rollup) -> str:
    """``"rp"."measurement"`` of a rollup (in the database the client queries)."""
    if rollup not in _ROLLUP_SOURCES:
        raise QueryBuildError("resolution", rollup, f"must be one of {', '.join(ROLLUPS)}")
    rp, measurement = _ROLLUP_SOURCES[rollup]
    return f"{quote_ident(rp)}.{quote_ident(measurement)}"


def rollup_fields_query(rollup: Rollup) -> str:
    """The field keys of a rollup measurement (``{key}_mean`` ... per value key)."""
    return f"SHOW FIELD KEYS FROM {rollup_source(rollup)}"


def rollup_value_keys(field_keys: Iterable[object]) -> list[str]:
    """The value keys whose ``{key}_mean`` is among ``field_keys`` (sorted; others ignored)."""
    keys = set()
    for name in field_keys:
        if isinstance(name, str) and name.endswith("_mean"):
            key = name.removesuffix("_mean")
            try:
                keys.add(check_field(key))
            except QueryBuildError:
                continue
    return sorted(keys)


def _rollup_stat(f: str, stat: str) -> str:
    """One statistic of field ``f`` over the rows of :func:`_rollup_subquery`."""
    w, n = quote_ident(f"{f}:w"), quote_ident(f"{f}:n")
    return {
        "count": f"sum({n})",
        "mean": f"sum({w}) / sum({n})",
        "min": f"min({quote_ident(f'{f}_min')})",
        "max": f"max({quote_ident(f'{f}_max')})",
    }[stat]


def _rollup_subquery(charger_id: str, fields: list[str], rollup: Rollup, where: str) -> str:
    """Per field: ``{f}:w`` = mean * the field's count (the bucket's sum), ``{f}:n`` = the
    field's count (``{f}_count``: the readings that carried it; null where the bucket has no
    such field, so it does not weigh), ``{f}_min`` and ``{f}_max`` as stored."""
    columns: list[str] = []
    for f in fields:
        mean, count = quote_ident(f"{f}_mean"), quote_ident(f"{f}_count")
        columns += [
            f"{mean} * {count} AS {quote_ident(f'{f}:w')}",
            f"{count} + 0 * {mean} AS {quote_ident(f'{f}:n')}",
            quote_ident(f"{f}_min"),
            quote_ident(f"{f}_max"),
        ]
    return (
        f"(SELECT {', '.join(columns)} FROM {rollup_source(rollup)} "
        f"WHERE {_charger_filter(charger_id)} AND {where})"
    )


def _rollup_fields(fields: list[str]) -> list[str]:
    if not fields:
        raise QueryBuildError("fields", fields, "a rollup query names its fields")
    return list(dict.fromkeys(check_field(f) for f in fields))


#: The stored column each aggregate reads of a rollup bucket, per value key.
ROLLUP_COLUMN: Final = {
    "mean": "mean", "sum": "mean", "count": "count", "min": "min", "max": "max", "last": "last",
}  # fmt: skip


def rollup_rows_query(
    charger_id: str,
    fields: list[str],
    start: datetime,
    end: datetime,
    limit: int,
    *,
    rollup: Rollup,
    agg: Aggregate,
    connector: tuple[int, int] | None = None,
) -> str:
    """The rollup buckets of one charger (all its connectors, or one ``connector``: evse,
    connector) that start in ``[start, end)``,
    oldest first, at most ``limit`` rows: per field the column ``agg`` reads
    (:data:`ROLLUP_COLUMN`) and, for ``mean`` and ``sum``, its weight ``{f}_count`` (the readings
    that carried the field), and ``count``. The caller combines them into its buckets (a plain
    select costs InfluxDB 1.x a fifth of a weighted mean computed in a subquery)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise QueryBuildError("limit", limit, "must be a positive integer")
    if agg not in ROLLUP_COLUMN:
        raise QueryBuildError("agg", agg, f"must be one of {', '.join(AGGREGATES)}")
    fields = _rollup_fields(fields)
    names = [f"{f}_{ROLLUP_COLUMN[agg]}" for f in fields]
    weights = [f"{f}_count" for f in fields if agg in ("mean", "sum")]
    columns = ", ".join(quote_ident(n) for n in [*names, *weights, "count"])
    return (
        f"SELECT {columns} FROM {rollup_source(rollup)} "
        f"WHERE {_charger_filter(charger_id)}{_connector_filter(connector)} "
        f"AND {_window(start, end)} ORDER BY time ASC LIMIT {limit}"
    )


def rollup_stats_query(
    charger_id: str, fields: list[str], start: datetime, end: datetime, *, rollup: Rollup
) -> str:
    """count (sum of counts), mean (count-weighted), min and max of each field of one charger
    over the rollup buckets that start in ``[start, end)``, in one row; columns
    ``{stat}_{field}``."""
    fields = _rollup_fields(fields)
    where = _window(start, end)
    columns = ", ".join(
        f"{_rollup_stat(f, stat)} AS {quote_ident(f'{stat}_{f}')}"
        for f in fields
        for stat in ROLLUP_STATS
    )
    return (
        f"SELECT {columns} FROM {_rollup_subquery(charger_id, fields, rollup, where)} WHERE {where}"
    )


def ping_query() -> str:
    """A cheap statement that needs the database and read access (readiness)."""
    return "SHOW MEASUREMENTS LIMIT 1"


# --- dead letters (docs/design.md#dead-letters): the API lists and replays them ---------------


def _reason_literal(reason: str) -> str:
    if not isinstance(reason, str) or not REASON_RE.fullmatch(reason):
        raise QueryBuildError("reason", reason, "not a dead-letter reason (^[a-z][a-z0-9_]*$)")
    return quote_string(reason)


def deadletters_query(
    start: datetime,
    end: datetime,
    *,
    limit: int,
    reason: str | None = None,
    gateway_id: str | None = None,
    until_ns: int | None = None,
) -> str:
    """Dead letters in ``[start, end)``, newest first, at most ``limit``; optionally of one
    ``reason`` and ``gateway_id`` only, and none newer than ``until_ns`` (paging: the caller
    skips the ones at ``until_ns`` it has already shown). Tags come back as columns."""
    if not 1 <= limit <= 100_000:
        raise QueryBuildError("limit", limit, "must be 1..100000")
    where = _window(start, end)
    if reason is not None:
        where += f" AND {quote_ident('reason')} = {_reason_literal(reason)}"
    if gateway_id is not None:
        gateway = check_id("gateway id", gateway_id)
        where += f" AND {quote_ident('gateway_id')} = {quote_string(gateway)}"
    if until_ns is not None:
        where += f" AND time <= {int(until_ns)}"
    return (
        f"SELECT * FROM {quote_ident(DEADLETTER_MEASUREMENT)} WHERE {where} "
        f"ORDER BY time DESC LIMIT {int(limit)}"
    )


def deadletter_query(ns: int, reason: str, gateway_id: str) -> str:
    """The one dead letter stored at ``ns`` with tags ``reason`` and ``gateway_id``."""
    if not isinstance(ns, int) or not 0 <= ns < 2**63:
        raise QueryBuildError("time", ns, "not a time in nanoseconds")
    gateway = quote_string(check_id("gateway id", gateway_id))
    return (
        f"SELECT * FROM {quote_ident(DEADLETTER_MEASUREMENT)} WHERE time = {ns} "
        f"AND {quote_ident('reason')} = {_reason_literal(reason)} "
        f"AND {quote_ident('gateway_id')} = {gateway}"
    )


# --- alarms (docs/alarms.md) ------------------------------------------------------------------


def alarms_query(
    start: datetime,
    end: datetime,
    limit: int,
    *,
    active_only: bool = False,
    kind: str | None = None,
    subject: str | None = None,
) -> str:
    """Alarm occurrences raised in ``[start, end)``, newest first, at most ``limit``; only the
    active ones with ``active_only``; ``kind`` and ``subject`` narrow them. Alarms are kept in
    the retention policy ``KEEP_RP`` (INF): their points are stamped with the raise time, which
    may be older than the raw readings' retention."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise QueryBuildError("limit", limit, "must be a positive integer")
    where = _window(start, end)
    if active_only:
        where += f" AND {quote_ident('active')} = true"
    if kind is not None:
        if kind not in ALARM_KINDS:
            raise QueryBuildError("kind", kind, f"one of {', '.join(ALARM_KINDS)}")
        where += f" AND {quote_ident('kind')} = {quote_string(kind)}"
    if subject is not None:
        if not isinstance(subject, str) or not ALARM_SUBJECT.fullmatch(subject):
            raise QueryBuildError("subject", subject, "not an alarm subject")
        where += f" AND {quote_ident('subject')} = {quote_string(subject)}"
    return (
        f"SELECT * FROM {quote_ident(KEEP_RP)}.{quote_ident(ALARM_MEASUREMENT)} WHERE {where} "
        f"ORDER BY time DESC LIMIT {limit}"
    )


def seqgaps_query(since: datetime) -> str:
    """Per (gateway, bridge): the newest ``seqgaps`` point since ``since`` (confirmed missing
    readings, gaps, first and last seq, epoch)."""
    names = ("gaps", "first", "last", "epoch")
    return (
        f"SELECT last({quote_ident('missing')}) AS {quote_ident('missing')}, "
        f"{', '.join(quote_ident(n) for n in names)} "
        f"FROM {quote_ident(SEQGAP_MEASUREMENT)} WHERE time >= {time_literal(since)} "
        f"GROUP BY {quote_ident('gateway_id')}, {quote_ident('bridge')}"
    )


def connector_statuses_query(since: datetime) -> str:
    """Per connector (charger_id, evse_id, connector_id) with a status stored in a reading
    stamped since ``since``: its newest status (column ``status``, time = that reading's). The
    alarms read every connector's status here: the live feed carries one reading per charger."""
    return (
        f"SELECT last({quote_ident('status')}) AS {quote_ident('status')} "
        f"FROM {quote_ident(MEASUREMENT)} WHERE time >= {time_literal(since)} "
        f"GROUP BY {quote_ident('charger_id')}, {quote_ident('evse_id')}, "
        f"{quote_ident('connector_id')}"
    )


def deadletter_counts_query(since: datetime) -> str:
    """Per gateway: how many dead letters were stored since ``since``."""
    return (
        f"SELECT count({quote_ident('payload_bytes')}) AS {quote_ident('count')} "
        f"FROM {quote_ident(DEADLETTER_MEASUREMENT)} WHERE time >= {time_literal(since)} "
        f"GROUP BY {quote_ident('gateway_id')}"
    )


# --- charger registry, connectors and sessions (docs/design.md#sessions): the API reads them --

SessionState = Literal["active", "ended"]
#: The state of a session point written again at an earlier start: every reader skips it.
SUPERSEDED: Final = "superseded"
#: The charger registry's fields (besides the tag charger_id), in column order.
REGISTRY_FIELDS: Final = ("gateway_id", "vendor", "model", "serial", "firmware")


def _keep(measurement: str) -> str:
    return f"{quote_ident(KEEP_RP)}.{quote_ident(measurement)}"


def registry_query(charger_ids: Sequence[str]) -> str:
    """Per charger of ``charger_ids``: its newest registry point (``gateway_id`` with the
    ``vendor``, ``model``, ``serial`` and ``firmware`` of the same point, null where it gave
    none), one series per charger (tagged ``charger_id``), in one query."""
    if not charger_ids:
        raise QueryBuildError("charger_ids", charger_ids, "give at least one charger id")
    match = " OR ".join(_charger_filter(c) for c in dict.fromkeys(charger_ids))
    first, *rest = REGISTRY_FIELDS
    columns = ", ".join([f"last({quote_ident(first)}) AS {quote_ident(first)}"] +
                        [quote_ident(f) for f in rest])  # fmt: skip
    return (
        f"SELECT {columns} FROM {_keep(CHARGER_MEASUREMENT)} WHERE {match} "
        f"GROUP BY {quote_ident('charger_id')}"
    )


def connector_readings_query(charger_id: str, since: datetime) -> str:
    """Per connector (``evse_id``, ``connector_id``) of one charger with a reading stamped since
    ``since``: its newest reading (time, ``seq``, and that reading's ``status``, ``power_w``,
    ``energy_wh``, ``transaction_id``, ``tx_event``; null where it carried none)."""
    names = ("status", "power_w", "energy_wh", "transaction_id", "tx_event")
    return (
        f"SELECT last({quote_ident('seq')}) AS {quote_ident('seq')}, "
        f"{', '.join(quote_ident(n) for n in names)} FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {_charger_filter(charger_id)} AND time >= {time_literal(since)} "
        f"GROUP BY {quote_ident('evse_id')}, {quote_ident('connector_id')}"
    )


def connector_status_query(charger_id: str, since: datetime) -> str:
    """Per connector of one charger: its newest status stamped since ``since`` (column
    ``status``; time = the reading that carried it)."""
    return (
        f"SELECT last({quote_ident('status')}) AS {quote_ident('status')} "
        f"FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {_charger_filter(charger_id)} AND time >= {time_literal(since)} "
        f"GROUP BY {quote_ident('evse_id')}, {quote_ident('connector_id')}"
    )


def _session_state(state: str | None) -> str:
    """The state condition: never a superseded point; only ``state`` when given."""
    if state is None:
        return f"{quote_ident('state')} != {quote_string(SUPERSEDED)}"
    if state not in get_args(SessionState):
        raise QueryBuildError("state", state, f"one of {', '.join(get_args(SessionState))}")
    return f"{quote_ident('state')} = {quote_string(state)}"


def sessions_query(
    start: datetime,
    end: datetime,
    *,
    limit: int | None,
    charger_id: str | None = None,
    gateway_id: str | None = None,
    state: str | None = None,
    newest_first: bool = False,
) -> str:
    """Sessions that started in ``[start, end)`` (superseded points left out), oldest first (or
    ``newest_first``), at most ``limit`` (None: all, for a streamed answer); of one charger or
    gateway, in one ``state``, when given. Every field, and the tags as columns."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise QueryBuildError("limit", limit, "must be a positive integer")
    where = f"{_window(start, end)} AND {_session_state(state)}"
    if charger_id is not None:
        where += f" AND {_charger_filter(charger_id)}"
    if gateway_id is not None:
        gateway = quote_string(check_id("gateway id", gateway_id))
        where += f" AND {quote_ident('gateway_id')} = {gateway}"
    order = "DESC" if newest_first else "ASC"
    return f"SELECT * FROM {_keep(SESSION_MEASUREMENT)} WHERE {where} ORDER BY time {order}" + (
        "" if limit is None else f" LIMIT {limit}"
    )


def session_query(charger_id: str, transaction_id: str) -> str:
    """The session of one charger's ``transaction_id`` (superseded points left out; any time)."""
    tx = quote_string(check_id("transaction id", transaction_id))
    return (
        f"SELECT * FROM {_keep(SESSION_MEASUREMENT)} WHERE {_charger_filter(charger_id)} "
        f"AND {quote_ident('transaction_id')} = {tx} AND {_session_state(None)}"
    )


# --- rollups: retention policies, aggregates per bucket, the job's progress ------------------
# docs/design.md#rollups. The rollup job (rollups/) is the only caller of these.

_RETENTION: Final = re.compile(r"(?:[1-9][0-9]*(?:m|h|d|w)|INF)")
#: Aggregates of each value key in a rollup, in the order of the columns of ``rollup_query``.
#: ``count`` is the readings that carried the key (an integer field): the weight of its mean.
ROLLUP_AGGREGATES: Final = ("mean", "min", "max", "last", "count")


def retention_literal(duration: str) -> str:
    """A retention or shard-group duration (``30d``, ``1h``, ``INF``) checked, as is."""
    if not isinstance(duration, str) or not _RETENTION.fullmatch(duration):
        raise QueryBuildError("duration", duration, "not a duration such as 30d, 12h, 4w or INF")
    return duration


def show_retention_policies_query(database: str) -> str:
    return f"SHOW RETENTION POLICIES ON {quote_ident(database)}"


def retention_policy_statement(
    verb: Literal["CREATE", "ALTER"],
    database: str,
    rp: str,
    duration: str,
    shard: str | None = None,
) -> str:
    """``CREATE`` (or ``ALTER``) ``RETENTION POLICY rp ON database`` with its durations
    (``shard`` None: InfluxDB's default for the duration); ``CREATE`` leaves the database's
    default alone. InfluxDB 1.x answers a CREATE of a policy that exists with the same
    durations with success, so it may run at every start."""
    if verb not in ("CREATE", "ALTER"):
        raise QueryBuildError("verb", verb, "CREATE or ALTER")
    replication = " REPLICATION 1" if verb == "CREATE" else ""
    shard_duration = "" if shard is None else f" SHARD DURATION {retention_literal(shard)}"
    return (
        f"{verb} RETENTION POLICY {quote_ident(check_id('retention policy', rp))} "
        f"ON {quote_ident(check_id('database', database))} "
        f"DURATION {retention_literal(duration)}{replication}{shard_duration}"
    )


def qualified(database: str, rp: str, measurement: str) -> str:
    """``"database"."rp"."measurement"``."""
    return f"{quote_ident(database)}.{quote_ident(rp)}.{quote_ident(measurement)}"


def _tags() -> str:
    return ", ".join(quote_ident(t) for t in TAG_KEYS)


def _chargers(charger_ids: Sequence[str] | None) -> str:
    if charger_ids is None:
        return ""
    if not charger_ids:
        raise QueryBuildError("charger_ids", charger_ids, "give at least one charger id or None")
    return "(" + " OR ".join(_charger_filter(c) for c in dict.fromkeys(charger_ids)) + ") AND "


def float_field_keys_query() -> str:
    """The field keys of the raw readings with their types (the rollup job keeps the floats)."""
    return f"SHOW FIELD KEYS FROM {quote_ident(MEASUREMENT)}"


def oldest_reading_query() -> str:
    """The time of the oldest raw reading (the first pass of the rollup job starts there)."""
    return f"SELECT first({quote_ident('seq')}) FROM {quote_ident(MEASUREMENT)}"


def series_counts_query(
    start: datetime, end: datetime, *, limit: int, offset: int = 0, source: str | None = None
) -> str:
    """Per series (the four tags) with points in ``[start, end)``: how many readings (raw:
    ``count(seq)``; ``source`` a qualified rollup measurement: ``sum(count)``), column
    ``count``; series paged by ``limit``/``offset`` (SLIMIT/SOFFSET)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise QueryBuildError("limit", limit, "must be a positive integer")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise QueryBuildError("offset", offset, "must be a non-negative integer")
    column = f"count({quote_ident('seq')})" if source is None else f"sum({quote_ident('count')})"
    frm = quote_ident(MEASUREMENT) if source is None else source
    return (
        f"SELECT {column} AS {quote_ident('count')} FROM {frm} WHERE {_window(start, end)} "
        f"GROUP BY {_tags()} SLIMIT {limit} SOFFSET {offset}"
    )


def total_count_query(start: datetime, end: datetime, *, source: str | None = None) -> str:
    """How many readings lie in ``[start, end)``, all series together (column ``count``): raw
    (``count(seq)``), or with ``source`` a qualified rollup measurement (``sum(count)``)."""
    column = f"count({quote_ident('seq')})" if source is None else f"sum({quote_ident('count')})"
    frm = quote_ident(MEASUREMENT) if source is None else source
    return f"SELECT {column} AS {quote_ident('count')} FROM {frm} WHERE {_window(start, end)}"


def rollup_query(
    fields: Sequence[str],
    start: datetime,
    end: datetime,
    every: timedelta,
    charger_ids: Sequence[str] | None = None,
    *,
    into: str | None = None,
) -> str:
    """The rollup of raw readings per ``every`` bucket (aligned on the epoch) and series in
    ``[start, end)``, of ``charger_ids`` (None: all): columns ``count`` (readings),
    ``status_last``, and ``{key}_{agg}`` for each of ``fields`` and ``ROLLUP_AGGREGATES``;
    empty buckets left out.

    With ``into`` (a :func:`qualified` measurement; InfluxDB 1.x only) InfluxDB writes the rows
    there itself (``SELECT ... INTO``: the four tags stay tags, ``count`` an integer field, null
    aggregates left out) and answers only how many points it wrote (column ``written``)."""
    columns = [
        f"count({quote_ident('seq')}) AS {quote_ident('count')}",
        f"last({quote_ident('status')}) AS {quote_ident('status_last')}",
    ]
    for f in dict.fromkeys(check_field(f) for f in fields):
        columns += [
            f"{a}({quote_ident(f)}) AS {quote_ident(f'{f}_{a}')}" for a in ROLLUP_AGGREGATES
        ]
    target = "" if into is None else f"INTO {into} "
    return (
        f"SELECT {', '.join(columns)} {target}FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {_chargers(charger_ids)}{_window(start, end)} "
        f"GROUP BY time({duration_literal(every)}), {_tags()} fill(none)"
    )


def rollup_state_query(
    database: str, rp: str, measurement: str, field: str = "done_until_ns"
) -> str:
    """The newest value of one of the rollup job's state fields (``done_until_ns`` its
    progress, ``marks_until_ns`` the late marks taken)."""
    return (
        f"SELECT last({quote_ident(field)}) AS {quote_ident(field)} "
        f"FROM {qualified(database, rp, measurement)}"
    )


def late_marks_query(since: datetime, limit: int) -> str:
    """The bridges' marks of late readings (``rollup_late``) stamped after ``since``, oldest
    first, at most ``limit``: columns first, last (ns) and the tags bridge, gateway_id."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise QueryBuildError("limit", limit, "must be a positive integer")
    return (
        f"SELECT {quote_ident('first')}, {quote_ident('last')}, {quote_ident('bridge')}, "
        f"{quote_ident('gateway_id')} FROM {quote_ident(ROLLUP_LATE_MEASUREMENT)} "
        f"WHERE time > {time_literal(since)} ORDER BY time ASC LIMIT {limit}"
    )
