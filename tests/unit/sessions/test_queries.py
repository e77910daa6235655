"""The sessions job's InfluxQL: ids checked before they are quoted, times as integers."""

from __future__ import annotations

import pytest

from sessions import queries
from telemetry_common.errors import InvalidIdError
from telemetry_common.influxql import QueryBuildError


def test_a_sessions_readings_are_selected_by_charger_transaction_and_time() -> None:
    q = queries.session_readings_query("CP-1", "tx.42", 1_000)
    assert q.endswith(
        """FROM "readings" WHERE "charger_id" = 'CP-1' AND "transaction_id" = 'tx.42' """
        "AND time >= 1000"
    )
    assert '"energy_suspect"' in q and '"gateway_id"' in q  # noqa: PT018


def test_discovery_groups_by_connector_and_narrows_to_a_gateway() -> None:
    assert queries.discovery_query(5, 9, "gw-1") == (
        """SELECT distinct("transaction_id") FROM "readings" WHERE "gateway_id" = 'gw-1' """
        """AND time >= 5 AND time <= 9 GROUP BY "charger_id", "evse_id", "connector_id", """
        '"gateway_id"'
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: queries.session_readings_query("CP-1' OR 1=1", "t", 0),
        lambda: queries.session_readings_query("CP-1", 'x" --', 0),
        lambda: queries.stored_session_query("db", "CP 1", "t", 0),
        lambda: queries.seqgaps_of_gateway_query("gw'", 0),
        lambda: queries.delete_session_point_query("CP-1", "gw\n1", 1, 1, 0),
    ],
)
def test_hostile_ids_are_refused(build: object) -> None:
    with pytest.raises(InvalidIdError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    "build",
    [
        lambda: queries.session_readings_query("CP-1", "t", 1.5),  # type: ignore[arg-type]
        lambda: queries.newer_reading_queries("CP-1", 256, 1, 0),
        lambda: queries.newer_reading_queries("CP-1", 1, True, 0),
        lambda: queries.state_query("db", "done_until_ns"),
    ],
)
def test_bad_numbers_and_fields_are_refused(build: object) -> None:
    with pytest.raises(QueryBuildError):
        build()  # type: ignore[operator]


def test_a_session_point_is_deleted_by_its_tags_and_exact_time() -> None:
    assert queries.delete_session_point_query("CP-1", "gw-1", 1, 2, 77) == (
        """DELETE FROM "sessions" WHERE "charger_id" = 'CP-1' AND "gateway_id" = 'gw-1' """
        """AND "evse_id" = '1' AND "connector_id" = '2' AND time >= 77 AND time <= 77"""
    )
