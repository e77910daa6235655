"""telemetry_common.influxql: the only place InfluxQL text is built (pure, no server)."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from telemetry_common.errors import InvalidIdError
from telemetry_common.influx_query import _form
from telemetry_common.influxql import (
    AGGREGATES,
    ROLLUP_STATS,
    QueryBuildError,
    check_field,
    count_readings_query,
    duration_literal,
    gateway_highest_seq_query,
    history_query,
    latest_per_charger_query,
    ping_query,
    quote_ident,
    quote_string,
    rollup_fields_query,
    rollup_rows_query,
    rollup_source,
    rollup_stats_query,
    rollup_value_keys,
    stats_query,
    time_literal,
)

START = datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
END = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
WHERE = (
    "\"charger_id\" = 'gw-1-cp001' AND time >= '2026-05-01T11:00:00.000000Z' "
    "AND time < '2026-05-01T12:00:00.000000Z'"
)

HOSTILE = [
    "a'b",
    'a"b',
    "a\\b",
    "a\\'b",
    "a\nb",
    "x'; DROP DATABASE telemetry; --",
    "x' OR '1'='1",
    "\\",
    "'",
    "",
    "a\\\\'\"\n;",
]


def _scan_quoted(text: str, quote: str) -> tuple[str, int]:
    """Read one quoted token at the start of ``text`` the way InfluxQL's scanner does.

    Returns the unescaped value and how many characters the token used; fails on anything the
    scanner would reject (a bad escape, a raw newline, a missing closing quote).
    """
    assert text[0] == quote
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\n":
            raise AssertionError("raw newline inside a quoted token")
        if ch == "\\":
            nxt = text[i + 1]
            assert nxt in ("n", "\\", '"', "'"), f"bad escape \\{nxt}"
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    raise AssertionError("unterminated quoted token")


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_string_is_one_token_that_reads_back_as_the_value(value: str) -> None:
    """A quoted string literal, however hostile the value, is exactly one token holding it."""
    literal = quote_string(value)
    read, used = _scan_quoted(literal, "'")
    assert read == value
    assert used == len(literal)


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_ident_is_one_token_that_reads_back_as_the_name(value: str) -> None:
    """A quoted identifier, however hostile the name, is exactly one token holding it."""
    ident = quote_ident(value)
    read, used = _scan_quoted(ident, '"')
    assert read == value
    assert used == len(ident)


def test_quoting_uses_influxql_escapes() -> None:
    """Backslash, the quote and newline are escaped as InfluxQL's QuoteString/QuoteIdent do."""
    assert quote_string("a'b\\c\nd") == "'a\\'b\\\\c\\nd'"
    assert quote_ident('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert quote_string('say "hi"') == "'say \"hi\"'"


def test_latest_per_charger_query_text() -> None:
    """The newest point of each charger over all its series, one series per charger; a charger
    asked twice is asked once, and an empty list is refused (it would select every charger)."""
    assert latest_per_charger_query(["gw-1-cp001"]) == (
        'SELECT * FROM "readings" WHERE "charger_id" = \'gw-1-cp001\' '
        'GROUP BY "charger_id" ORDER BY time DESC LIMIT 1'
    )
    assert latest_per_charger_query(["a", "b", "a"]) == (
        'SELECT * FROM "readings" WHERE "charger_id" = \'a\' OR "charger_id" = \'b\' '
        'GROUP BY "charger_id" ORDER BY time DESC LIMIT 1'
    )
    with pytest.raises(QueryBuildError, match="at least one"):
        latest_per_charger_query([])


@pytest.mark.parametrize("charger_id", [*HOSTILE, "x" * 65, "gw 1", "cp/1", "é", "a*"])
def test_hostile_charger_ids_are_refused_before_quoting(charger_id: str) -> None:
    """Ids outside the allow-list never reach a query, in latest or history."""
    with pytest.raises(InvalidIdError):
        latest_per_charger_query(["ok-1", charger_id])
    with pytest.raises(InvalidIdError):
        history_query(charger_id, None, START, END, 10)


def test_longest_allowed_id_is_accepted() -> None:
    """The allow-list's upper bound (64 characters of [A-Za-z0-9._-]) is usable."""
    charger_id = "A.b_c-9" * 9 + "x"
    assert len(charger_id) == 64
    assert f"'{charger_id}'" in latest_per_charger_query([charger_id])


def test_raw_history_query_text_with_all_fields() -> None:
    """Raw history without fields selects every column in [start, end), oldest first."""
    assert history_query("gw-1-cp001", None, START, END, 500) == (
        f'SELECT * FROM "readings" WHERE {WHERE} ORDER BY time ASC LIMIT 500'
    )


def test_raw_history_query_selects_fields_meta_and_tags_once_each() -> None:
    """Named fields come with seq, status and the tags; duplicates are dropped, order kept."""
    q = history_query("gw-1-cp001", ["power_w", "energy_wh", "power_w"], START, END, 10)
    assert q == (
        'SELECT "status", "seq", "power_w", "energy_wh", "gateway_id", "evse_id", '
        f'"connector_id" FROM "readings" WHERE {WHERE} ORDER BY time ASC LIMIT 10'
    )


def test_downsampled_history_query_names_columns_after_fields() -> None:
    """every + agg groups by time buckets, leaves empty buckets out and aliases each field."""
    q = history_query(
        "gw-1-cp001", ["power_w", "soc_pct"], START, END, 60, every=timedelta(minutes=5), agg="max"
    )
    assert q == (
        'SELECT max("power_w") AS "power_w", max("soc_pct") AS "soc_pct" FROM "readings" '
        f"WHERE {WHERE} GROUP BY time(5m) fill(none) ORDER BY time ASC LIMIT 60"
    )


@pytest.mark.parametrize("agg", AGGREGATES)
def test_downsampled_history_query_without_fields_uses_the_wildcard(agg: str) -> None:
    """Without fields, each aggregate applies to every field through ``agg(*)``."""
    q = history_query("gw-1-cp001", None, START, END, 5, every=timedelta(hours=1), agg=agg)  # type: ignore[arg-type]
    assert q.startswith(f'SELECT {agg}(*) FROM "readings" WHERE ')
    assert "GROUP BY time(1h) fill(none)" in q


@pytest.mark.parametrize(
    "name",
    [
        'power_w"); DROP DATABASE telemetry; --',
        "power_w'",
        "Power_W",
        "1power",
        "power-w",
        "power w",
        "power\nw",
        "",
        "a" * 64,
        "status",
        "seq",
        "time",
        "charger_id",
        "gateway_id",
        "evse_id",
        "connector_id",
    ],
)
def test_fields_outside_the_value_key_rule_are_refused(name: str) -> None:
    """A field must be a reading value key; tags, time, seq, status and hostile text are not."""
    with pytest.raises(QueryBuildError) as info:
        history_query("gw-1-cp001", ["power_w", name], START, END, 10)
    assert info.value.parameter == "fields"
    assert info.value.value == name
    with pytest.raises(QueryBuildError):
        check_field(name)


def test_empty_field_list_is_refused() -> None:
    """An empty list is a caller bug (None means every field), not a query for nothing."""
    with pytest.raises(QueryBuildError, match="at least one field"):
        history_query("gw-1-cp001", [], START, END, 10)


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, "10"])
def test_limit_must_be_a_positive_integer(limit: object) -> None:
    """LIMIT is always a positive int: no float, bool or text reaches the query."""
    with pytest.raises(QueryBuildError) as info:
        history_query("gw-1-cp001", None, START, END, limit)  # type: ignore[arg-type]
    assert info.value.parameter == "limit"


def test_empty_or_reversed_range_is_refused() -> None:
    """start must be strictly before end."""
    with pytest.raises(QueryBuildError, match="before end"):
        history_query("gw-1-cp001", None, END, END, 10)
    with pytest.raises(QueryBuildError, match="before end"):
        history_query("gw-1-cp001", None, END, START, 10)


@pytest.mark.parametrize("agg", ["median", "MEAN", "mean(*)); DROP DATABASE x; --", ""])
def test_unknown_aggregates_are_refused(agg: str) -> None:
    """Only mean/min/max/last/count/sum are spliced in as functions."""
    with pytest.raises(QueryBuildError) as info:
        history_query("gw-1-cp001", None, START, END, 10, every=timedelta(minutes=1), agg=agg)  # type: ignore[arg-type]
    assert info.value.parameter == "agg"


def test_aggregate_without_every_is_refused() -> None:
    """agg only makes sense with a bucket width."""
    with pytest.raises(QueryBuildError, match="needs every"):
        history_query("gw-1-cp001", None, START, END, 10, agg="mean")


def test_time_literal_is_utc_rfc3339_with_microseconds() -> None:
    """Times are converted to UTC and written as quoted RFC 3339 with a Z."""
    cest = timezone(timedelta(hours=2))
    ts = datetime(2026, 5, 1, 14, 0, 0, 123456, tzinfo=cest)
    assert time_literal(ts) == "'2026-05-01T12:00:00.123456Z'"


def test_time_literal_refuses_naive_and_unstorable_times() -> None:
    """A naive time (ambiguous) or one outside InfluxDB's int64 ns range is refused."""
    with pytest.raises(QueryBuildError, match="timezone-aware"):
        time_literal(datetime(2026, 5, 1))  # naive on purpose
    with pytest.raises(QueryBuildError, match="range"):
        time_literal(datetime(1600, 1, 1, tzinfo=UTC))
    with pytest.raises(QueryBuildError, match="range"):
        time_literal(datetime(2300, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("every", "literal"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=1), "1d"),
        (timedelta(weeks=2), "2w"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(microseconds=7), "7u"),
    ],
)
def test_duration_literal_uses_the_largest_exact_unit(every: timedelta, literal: str) -> None:
    """Bucket widths are written exactly, never rounded."""
    assert duration_literal(every) == literal


@pytest.mark.parametrize("every", [timedelta(0), timedelta(seconds=-5)])
def test_duration_literal_refuses_non_positive_widths(every: timedelta) -> None:
    """A zero or negative bucket width is refused."""
    with pytest.raises(QueryBuildError, match="positive"):
        duration_literal(every)


def test_generated_queries_are_single_statements() -> None:
    """No builder output contains a statement separator or a raw newline."""
    queries = [
        latest_per_charger_query(["a.b-c_d", "e"]),
        history_query("a.b-c_d", ["power_w"], START, END, 10),
        history_query("a.b-c_d", None, START, END, 10, every=timedelta(seconds=10), agg="sum"),
    ]
    for q in queries:
        assert ";" not in q
        assert "\n" not in q


# --- builders of the query API: stats, fleet counts, ingest seq, readiness -------------------


def test_stats_query_names_each_statistic_per_field() -> None:
    """One row: {stat}_{field} for each of count, mean, median, stddev, min, max."""
    q = stats_query("gw-1-cp001", ["power_w", "power_w"], START, END)
    assert q == (
        'SELECT count("power_w") AS "count_power_w", mean("power_w") AS "mean_power_w", '
        'median("power_w") AS "median_power_w", stddev("power_w") AS "stddev_power_w", '
        'min("power_w") AS "min_power_w", max("power_w") AS "max_power_w" '
        f'FROM "readings" WHERE {WHERE}'
    )
    assert stats_query("gw-1-cp001", None, START, END).startswith(
        "SELECT count(*), mean(*), median(*), stddev(*), min(*), max(*) FROM"
    )


@pytest.mark.parametrize("field", ["seq", "status", "time", "Power", 'p" FROM x', ""])
def test_stats_query_refuses_non_value_fields(field: str) -> None:
    """Meta fields, tags and anything outside the value-key rule are refused."""
    with pytest.raises(QueryBuildError):
        stats_query("gw-1-cp001", [field], START, END)


@pytest.mark.parametrize("charger", HOSTILE)
def test_stats_query_refuses_hostile_ids(charger: str) -> None:
    """Ids outside the allow-list never reach the text."""
    with pytest.raises(InvalidIdError):
        stats_query(charger, None, START, END)


def test_count_readings_query_by_status_and_window() -> None:
    """A status filter is a quoted literal of the OCPP list; others are refused; empty windows
    are refused."""
    assert count_readings_query(START, END, "Charging") == (
        'SELECT count("seq") FROM "readings" WHERE time >= \'2026-05-01T11:00:00.000000Z\' '
        "AND time < '2026-05-01T12:00:00.000000Z' AND \"status\" = 'Charging'"
    )
    assert '"status"' not in count_readings_query(START, END)
    for bad in ("charging", "x' OR '1'='1", ""):
        with pytest.raises(QueryBuildError):
            count_readings_query(START, END, bad)
    with pytest.raises(QueryBuildError):
        count_readings_query(END, START)


def test_gateway_highest_seq_and_ping() -> None:
    """The ingest seq query filters one allowed gateway; readiness is a read-only SHOW."""
    assert gateway_highest_seq_query("http-1") == (
        'SELECT max("seq") AS "seq" FROM "readings" WHERE "gateway_id" = \'http-1\''
    )
    with pytest.raises(InvalidIdError):
        gateway_highest_seq_query("gw' OR 1=1")
    assert ping_query().startswith("SHOW ")


# --- rollups --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agg", "column"),
    [("mean", "mean"), ("sum", "mean"), ("count", "count"), ("min", "min"), ("max", "max"),
     ("last", "last")],
)  # fmt: skip
def test_rollup_rows_query_reads_the_column_of_the_aggregate_and_count(
    agg: str, column: str
) -> None:
    """A plain select of the rollup rows (all connectors), oldest first, with count, and for a
    mean or sum each key's own count (its weight)."""
    q = rollup_rows_query(
        "gw-1-cp001", ["power_w", "soc_pct"], START, END, 100, rollup="1h",
        agg=agg,  # type: ignore[arg-type]
    )  # fmt: skip
    weights = '"power_w_count", "soc_pct_count", ' if agg in ("mean", "sum") else ""
    assert q == (
        f'SELECT "power_w_{column}", "soc_pct_{column}", {weights}"count" '
        f'FROM "rollup_1h"."readings_1h" WHERE {WHERE} ORDER BY time ASC LIMIT 100'
    )


def test_rollup_stats_query_has_exact_statistics_only() -> None:
    """count, weighted mean, min, max per field; no median or stddev."""
    q = rollup_stats_query("gw-1-cp001", ["power_w", "soc_pct"], START, END, rollup="1h")
    for stat in ROLLUP_STATS:
        assert f'AS "{stat}_power_w"' in q
        assert f'AS "{stat}_soc_pct"' in q
    assert "median" not in q
    assert "stddev" not in q


@pytest.mark.parametrize("name", HOSTILE)
def test_rollup_queries_refuse_hostile_fields_and_ids(name: str) -> None:
    """Fields are value keys and the charger id an id, as for raw queries."""
    with pytest.raises(QueryBuildError):
        rollup_stats_query("gw-1-cp001", [name], START, END, rollup="1h")
    with pytest.raises((QueryBuildError, InvalidIdError)):
        rollup_rows_query(name, ["power_w"], START, END, 5, rollup="1m", agg="mean")
    with pytest.raises(QueryBuildError):
        rollup_source(name)  # type: ignore[arg-type]


def test_rollup_value_keys_come_from_the_mean_columns() -> None:
    """SHOW FIELD KEYS answer -> the value keys (meta and odd names ignored)."""
    keys = ["count", "status_last", "power_w_mean", "power_w_min", "soc_pct_mean", "Bad_mean"]
    assert rollup_value_keys(keys) == ["power_w", "soc_pct"]
    assert rollup_fields_query("1m") == 'SHOW FIELD KEYS FROM "rollup_1m"."readings_1m"'


def test_field_str_quotes_and_escapes_a_line_protocol_string() -> None:
    """One copy for the dead letters' and the alarms' points."""
    from telemetry_common.influx_write import field_str

    assert field_str('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'
    assert field_str("") == '""'


def test_form_bodies_are_encoded_as_urlencode_does() -> None:
    """The InfluxQL client's own form encoding (one translate for ASCII) gives the bytes
    ``urllib.parse.urlencode`` gives, for every ASCII character and for non-ASCII text."""
    text = "".join(chr(i) for i in range(128)) + "é ü 😀 'x' \"y\" 1+1=2&q"
    params = {"db": "tele metry", "epoch": "ns", "q": text}
    assert _form(params) == urllib.parse.urlencode(params).encode()
    assert _form({"q": "SELECT *"}) == b"q=SELECT+%2A"
