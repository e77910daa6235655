"""The sessions job's InfluxQL (docs/design.md#sessions), built with the quoting helpers of
:mod:`telemetry_common.influxql`; times are integer nanoseconds (exact, as stored). Ids are
checked against the allow-list before they are quoted."""

from __future__ import annotations

from typing import Final

from telemetry_common.ids import check_id
from telemetry_common.influxql import QueryBuildError, qualified, quote_ident, quote_string
from telemetry_common.schema import IN_TRANSACTION
from telemetry_common.storage import (
    KEEP_RP,
    MEASUREMENT,
    SEQGAP_MEASUREMENT,
    SESSION_MEASUREMENT,
    SESSION_STATE_MEASUREMENT,
)

#: The columns of a session's readings (tags can be selected as columns).
READING_COLUMNS: Final = (
    "seq",
    "epoch",
    "energy_wh",
    "power_w",
    "energy_suspect",
    "tx_event",
    "stop_reason",
    "id_tag_hash",
    "evse_id",
    "connector_id",
    "gateway_id",
)
_GROUP: Final = ("charger_id", "evse_id", "connector_id", "gateway_id")


def _ns(name: str, value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueryBuildError(name, value, "an integer time in nanoseconds")
    return str(value)


def _eq(tag: str, value: str) -> str:
    return f"{quote_ident(tag)} = {quote_string(value)}"


def _sessions(database: str) -> str:
    return qualified(database, KEEP_RP, SESSION_MEASUREMENT)


def discovery_query(start_ns: int, end_ns: int | None = None, gateway_id: str | None = None) -> str:
    """The transaction ids of the readings stamped in ``[start, end]`` (``end`` None: no upper
    bound), of one gateway or all: one series per connector (the four tags), column
    ``distinct``."""
    where = f"time >= {_ns('start', start_ns)}"
    if end_ns is not None:
        where += f" AND time <= {_ns('end', end_ns)}"
    if gateway_id is not None:
        where = f"{_eq('gateway_id', check_id('gateway id', gateway_id))} AND {where}"
    return (
        f"SELECT distinct({quote_ident('transaction_id')}) FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {where} GROUP BY {', '.join(quote_ident(t) for t in _GROUP)}"
    )


def window_readings_query(start_ns: int) -> str:
    """Every reading stamped at or after ``start`` (the steady pass's stretch): one series per
    connector (the four tags), columns ``transaction_id``, ``status`` and READING_COLUMNS."""
    columns = ["transaction_id", "status", *(c for c in READING_COLUMNS if c not in _GROUP)]
    return (
        f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {quote_ident(MEASUREMENT)} "
        f"WHERE time >= {_ns('start', start_ns)} "
        f"GROUP BY {', '.join(quote_ident(t) for t in _GROUP)}"
    )


def session_readings_query(charger_id: str, transaction_id: str, lo_ns: int) -> str:
    """The readings of one (charger, transaction) stamped at or after ``lo``: READING_COLUMNS."""
    return (
        f"SELECT {', '.join(quote_ident(c) for c in READING_COLUMNS)} "
        f"FROM {quote_ident(MEASUREMENT)} "
        f"WHERE {_eq('charger_id', check_id('charger id', charger_id))} "
        f"AND {_eq('transaction_id', check_id('transaction id', transaction_id))} "
        f"AND time >= {_ns('lo', lo_ns)}"
    )


def newer_reading_queries(
    charger_id: str, evse_id: int, connector_id: int, after_ns: int
) -> tuple[str, str]:
    """Whether the connector has a reading stamped after ``after`` (a session's newest reading:
    any reading after it carries another or no transaction) that ends the session
    (:func:`sessions.compute.ends_session`), in two statements (InfluxQL cannot match a missing
    field): the readings after ``after`` and those of them with a transaction (``n``, ``tx``),
    and those with a status of IN_TRANSACTION (``n``). Read by :func:`sessions.answers.ends`."""
    for name, value in (("evse_id", evse_id), ("connector_id", connector_id)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise QueryBuildError(name, value, "an integer 0..255")
    where = (
        f"WHERE {_eq('charger_id', check_id('charger id', charger_id))} "
        f"AND {_eq('evse_id', str(evse_id))} AND {_eq('connector_id', str(connector_id))} "
        f"AND time > {_ns('after', after_ns)}"
    )
    n = f"count({quote_ident('seq')}) AS {quote_ident('n')}"
    statuses = "|".join(sorted(IN_TRANSACTION))  # letters only: nothing to escape
    return (
        f"SELECT {n}, count({quote_ident('transaction_id')}) AS {quote_ident('tx')} "
        f"FROM {quote_ident(MEASUREMENT)} {where}",
        f"SELECT {n} FROM {quote_ident(MEASUREMENT)} {where} "
        f"AND {quote_ident('status')} =~ /^({statuses})$/",
    )


def active_sessions_query(database: str, since_ns: int) -> str:
    """The stored sessions still ``active`` that started at or after ``since``."""
    return (
        f"SELECT * FROM {_sessions(database)} "
        f"WHERE {_eq('state', 'active')} AND time >= {_ns('since', since_ns)}"
    )


def stored_session_query(database: str, charger_id: str, transaction_id: str, since_ns: int) -> str:
    """The stored points of one (charger, transaction) that started at or after ``since``
    (superseded ones left out)."""
    return (
        f"SELECT * FROM {_sessions(database)} "
        f"WHERE {_eq('charger_id', check_id('charger id', charger_id))} "
        f"AND {_eq('transaction_id', check_id('transaction id', transaction_id))} "
        f"AND {quote_ident('state')} != {quote_string('superseded')} "
        f"AND time >= {_ns('since', since_ns)}"
    )


def delete_session_point_query(
    charger_id: str, gateway_id: str, evse_id: int, connector_id: int, at_ns: int
) -> str:
    """Drop one session point (its tags and time): a point written again keeps the fields the
    new one leaves out (``ended_at`` of a session that came back to life)."""
    return (
        f"DELETE FROM {quote_ident(SESSION_MEASUREMENT)} "
        f"WHERE {_eq('charger_id', check_id('charger id', charger_id))} "
        f"AND {_eq('gateway_id', check_id('gateway id', gateway_id))} "
        f"AND {_eq('evse_id', str(int(evse_id)))} "
        f"AND {_eq('connector_id', str(int(connector_id)))} "
        f"AND time >= {_ns('at', at_ns)} AND time <= {_ns('at', at_ns)}"
    )


def seqgaps_of_gateway_query(gateway_id: str, since_ns: int) -> str:
    """Per bridge: the newest ``seqgaps`` point of the gateway stamped since ``since``
    (``missing``, ``first``, ``last``, ``epoch``; ``missing`` 0: its gaps were filled)."""
    return (
        f"SELECT last({quote_ident('missing')}) AS {quote_ident('missing')}, "
        f"{quote_ident('first')}, {quote_ident('last')}, {quote_ident('epoch')} "
        f"FROM {quote_ident(SEQGAP_MEASUREMENT)} "
        f"WHERE {_eq('gateway_id', check_id('gateway id', gateway_id))} "
        f"AND time >= {_ns('since', since_ns)} GROUP BY {quote_ident('bridge')}"
    )


def state_query(database: str, field: str) -> str:
    """The newest value of one of the job's progress fields (``scanned_until_ns``,
    ``marks_until_ns``)."""
    if field not in ("scanned_until_ns", "marks_until_ns"):
        raise QueryBuildError("field", field, "scanned_until_ns or marks_until_ns")
    return (
        f"SELECT last({quote_ident(field)}) AS {quote_ident(field)} "
        f"FROM {qualified(database, KEEP_RP, SESSION_STATE_MEASUREMENT)}"
    )
