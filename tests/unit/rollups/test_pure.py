"""The rollup job's pure parts: bucket arithmetic, line protocol of rollup rows, retention
durations and the InfluxQL it asks."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from rollups.job import _is_v1, _survey_answer, _written
from rollups.lines import rollup_lines, state_line
from rollups.retention import operator_instructions
from rollups.settings import RollupsInfluxSettings, RollupsSettings, to_timedelta
from rollups.windows import HOUR, MINUTE, batches, ceil, chunks, floor, from_ns, steps, to_ns
from telemetry_common.errors import InvalidIdError
from telemetry_common.influx_query import Series
from telemetry_common.influxql import (
    QueryBuildError,
    retention_policy_statement,
    rollup_query,
    series_counts_query,
)
from telemetry_common.retention import go_duration

T0 = datetime(2026, 12, 5, 10, 30, 15, 500_000, tzinfo=UTC)


def test_buckets_are_aligned_on_the_epoch_and_times_round_trip_through_nanoseconds() -> None:
    """floor/ceil give InfluxDB's GROUP BY time() bucket starts; ns conversions are exact."""
    assert floor(T0, MINUTE) == datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
    assert floor(T0, HOUR) == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert ceil(T0, HOUR) == datetime(2026, 12, 5, 11, tzinfo=UTC)
    assert ceil(floor(T0, HOUR), HOUR) == floor(T0, HOUR)
    assert from_ns(to_ns(T0)) == T0


def test_chunks_cover_the_range_without_gaps_and_align_on_hours_after_the_first() -> None:
    """A long stretch is cut into pieces of at most the chunk size; every piece after the first
    starts on a whole hour (so each piece's hours are whole)."""
    start, end = T0, T0 + timedelta(days=2, hours=3)
    pieces = list(chunks(start, end, timedelta(days=1)))
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert all(b - a <= timedelta(days=1) for a, b in pieces)
    assert all(floor(a, HOUR) == a for a, _ in pieces[1:])
    assert list(chunks(end, end, timedelta(days=1))) == []


def test_steps_bound_the_rows_of_one_query() -> None:
    """buckets x series per step stays within the cap, at least one bucket a step."""
    start = floor(T0, MINUTE)
    cut = list(steps(start, start + timedelta(hours=2), MINUTE, 7, 100))
    assert all((b - a) // MINUTE * 7 <= 100 for a, b in cut)
    assert cut[0][0] == start
    assert cut[-1][1] == start + timedelta(hours=2)
    assert list(steps(start, start + 3 * MINUTE, MINUTE, 1000, 10)) == [
        (start + i * MINUTE, start + (i + 1) * MINUTE) for i in range(3)
    ]
    assert list(batches({"b": 1, "a": 2, "c": 1}, 2)) == [["a", "b"], ["c"]]


def test_rollup_rows_become_lines_with_typed_fields_and_no_nulls() -> None:
    """count and each key's count are integers, status_last a string, aggregates floats (an
    integral JSON number goes out without the ``i`` suffix, which line protocol reads as a
    float); nulls are left out; a row without readings is not written."""
    series = Series(
        name="readings",
        columns=[
            "time",
            "count",
            "status_last",
            "power_w_max",
            "power_w_mean",
            "power_w_count",
            "soc_pct_mean",
            "soc_pct_count",
        ],
        values=[
            [60_000_000_000, 3, 'Char"ging', 7, 1.5, 2, None, 0],
            [120_000_000_000, 0, None, 1, 1, 0, 1, 0],
        ],
        tags={"charger_id": "cp-1", "gateway_id": "gw-1", "evse_id": "1", "connector_id": ""},
    )
    assert list(rollup_lines("readings_1m", [series])) == [
        "readings_1m,charger_id=cp-1,evse_id=1,gateway_id=gw-1 "
        "power_w_max=7,power_w_mean=1.5,power_w_count=2i,soc_pct_count=0i,count=3i,"
        'status_last="Char\\"ging" 60000000000'
    ]
    assert state_line("rollup_state", 5, 6) == "rollup_state done_until_ns=5i 6"


def test_the_rollup_query_names_each_aggregate_and_bounds_window_and_chargers() -> None:
    """One column per key and aggregate, count of seq, last status; grouped by the bucket and
    the four tags; a hostile field name is refused before it is quoted."""
    q = rollup_query(["power_w"], T0, T0 + HOUR, MINUTE, ["cp-1", "cp-2"])
    assert q == (
        'SELECT count("seq") AS "count", last("status") AS "status_last", '
        'mean("power_w") AS "power_w_mean", min("power_w") AS "power_w_min", '
        'max("power_w") AS "power_w_max", last("power_w") AS "power_w_last", '
        'count("power_w") AS "power_w_count" FROM "readings" '
        "WHERE (\"charger_id\" = 'cp-1' OR \"charger_id\" = 'cp-2') AND "
        "time >= '2026-12-05T10:30:15.500000Z' AND time < '2026-12-05T11:30:15.500000Z' "
        'GROUP BY time(1m), "charger_id", "gateway_id", "evse_id", "connector_id" fill(none)'
    )
    with pytest.raises(QueryBuildError):
        rollup_query(['x" FROM y'], T0, T0 + HOUR, MINUTE)
    with pytest.raises(InvalidIdError):
        rollup_query(["power_w"], T0, T0 + HOUR, MINUTE, ["cp 1"])
    assert "SLIMIT 10 SOFFSET 20" in series_counts_query(T0, T0 + HOUR, limit=10, offset=20)
    with pytest.raises(QueryBuildError):
        series_counts_query(T0, T0 + HOUR, limit=0)


def test_retention_statements_and_durations() -> None:
    """Durations are checked before they reach InfluxQL; InfluxDB's answers parse back."""
    assert retention_policy_statement("CREATE", "telemetry", "rollup_1m", "365d", "7d") == (
        'CREATE RETENTION POLICY "rollup_1m" ON "telemetry" DURATION 365d REPLICATION 1 '
        "SHARD DURATION 7d"
    )
    assert retention_policy_statement("ALTER", "t", "autogen", "INF", "1d").startswith(
        'ALTER RETENTION POLICY "autogen" ON "t" DURATION INF SHARD'
    )
    with pytest.raises(QueryBuildError):
        retention_policy_statement("CREATE", "t", "r", "30d; DROP DATABASE t", "1d")
    assert go_duration("720h0m0s") == timedelta(days=30) == to_timedelta("30d")
    assert go_duration("0s") is None
    assert to_timedelta("INF") is None


def test_on_influxdb_2_the_job_says_which_buckets_to_create() -> None:
    """With the v2 API nothing is altered; the log names the buckets the writer maps to."""
    s = RollupsSettings(influx=RollupsInfluxSettings(api="v2", bucket="telemetry"))
    text = operator_instructions(s)
    assert "'telemetry_rollup_1m' (retention 365d)" in text
    assert "'telemetry_rollup_1h' (retention 1825d)" in text
    assert "30d" in text


def test_the_jobs_influxdb_defaults_survive_a_variable_of_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting only INFLUX__URL keeps the job's own defaults of the group (a minute per query,
    no CREATE DATABASE), not those of the bridge's InfluxDB settings."""
    monkeypatch.setenv("TELEMETRY_ROLLUPS_INFLUX__URL", "http://influx.example:8086")
    s = RollupsSettings()
    assert s.influx.url == "http://influx.example:8086"
    assert s.influx.timeout_s == 60.0
    assert s.influx.create_database is False


def test_a_rollup_into_statement_names_its_target_and_keeps_the_tags_and_columns() -> None:
    """``into``: the same SELECT (the four tags grouped, fill(none)) with ``INTO`` the
    qualified rollup measurement before FROM; without it, no INTO."""
    target = '"telemetry"."rollup_1m"."readings_1m"'
    plain = rollup_query(["power_w"], T0, T0 + MINUTE, MINUTE)
    into = rollup_query(["power_w"], T0, T0 + MINUTE, MINUTE, into=target)
    assert "INTO" not in plain
    assert into == plain.replace(' FROM "readings"', f' INTO {target} FROM "readings"')
    assert 'GROUP BY time(1m), "charger_id", "gateway_id", "evse_id", "connector_id"' in into
    assert into.endswith("fill(none)")


def test_answers_of_into_and_of_the_survey_are_read_and_versions_told_apart() -> None:
    """The points an INTO wrote come from its ``written`` column; the survey's totals add up
    (no series: 0); ``/ping`` versions 1.x choose INTO, 2.x/3.x not."""
    written = Series("result", ["time", "written"], [[0, 42]])
    assert _written([written]) == 42
    assert _written([]) == 0
    keys = Series("readings", ["fieldKey", "fieldType"], [["power_w", "float"], ["seq", "integer"]])
    raw = Series("readings", ["time", "count"], [[0, 7]])
    assert _survey_answer([[keys]]) == (["power_w"], None)
    assert _survey_answer([[keys], [raw], []]) == (["power_w"], (7, 0))
    assert _is_v1("1.8.10")
    assert _is_v1("v1.11.8")
    assert not _is_v1("v2.7.4")
    assert not _is_v1("3.0.1")
