"""The provisioned bindings loader against a real InfluxDB 1.x: the store alone, the file and the
store together, a refresh that picks up a change, and a store that does not exist yet."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from processor.state.bindings import load_bindings
from processor.state.storage import load_bindings_store, refresh_bindings_forever
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer, create_retention_policy
from telemetry_common.settings import InfluxSettings
from telemetry_common.storage import KEEP_RP
from tests.support.fixtures import InfluxTarget
from tests.support.influx import influxql

pytestmark = pytest.mark.integration


def _change(charger: str, gateway: str, ns: int | None = None) -> str:
    return (
        f'bindings,charger_id={charger} gateway_id="{gateway}",previous="",changed_by="test" '
        f"{ns if ns is not None else time.time_ns()}"
    )


async def test_the_store_is_created_once_and_read_with_the_file(
    influx_db: InfluxTarget, tmp_path: Path
) -> None:
    """No store yet: an empty one (not an error). `keep` is created with duration INF, again
    without error; then file + store: the store's newest change per charger overrides the file
    (a move, an unbind), the file binds the rest."""
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    path = tmp_path / "bindings.json"
    path.write_text('{"cp-1": "gw-1", "cp-2": "gw-1", "cp-3": "gw-1"}')
    bindings = load_bindings(path)
    async with InfluxQLClient(settings) as client:
        assert await load_bindings_store(bindings, client, None)
        assert bindings.refreshed_at is not None
        assert bindings.get("cp-1") == "gw-1"

        assert await create_retention_policy(settings, KEEP_RP)
        assert await create_retention_policy(settings, KEEP_RP)  # idempotent
        rps = influxql(influx_db.url, influx_db.database, "SHOW RETENTION POLICIES")
        keep = [row for row in rps if row[0] == KEEP_RP]
        assert keep
        assert keep[0][1] == "0s"
        assert keep[0][4] is False

        now = time.time_ns()
        async with Writer(settings) as writer:
            await writer.write(
                [
                    _change("cp-1", "gw-9", now - 3_000_000_000),
                    _change("cp-1", "gw-2", now - 2_000_000_000),  # the newest wins
                    _change("cp-2", "", now - 1_000_000_000),
                    _change("cp-4", "gw-4", now),
                ],
                rp=KEEP_RP,
            )
        # Stored in `keep`, not in the default policy.
        stored = f'SELECT count("gateway_id") FROM "{KEEP_RP}"."bindings"'
        assert influxql(influx_db.url, influx_db.database, stored)[0][1] == 4
        assert influxql(influx_db.url, influx_db.database, "SELECT * FROM bindings") == []

        again = load_bindings(path)
        assert await load_bindings_store(again, client, None)
    assert again.claim("gw-2", "cp-1") is None
    assert again.claim("gw-1", "cp-1") == "gw-2"
    assert again.claim("gw-1", "cp-2") == ""
    assert again.claim("gw-1", "cp-3") is None
    assert again.claim("gw-4", "cp-4") is None
    assert again.claim("gw-1", "cp-5") == ""
    assert again.status()["from_store"] == 2
    assert len(again) == 3


async def test_a_refresh_picks_up_a_change_without_a_restart(influx_db: InfluxTarget) -> None:
    """A bridge's refresh task applies a change written after it loaded the store (only the
    changes since its last read are asked for)."""
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    assert await create_retention_policy(settings, KEEP_RP)
    bindings = load_bindings(None)
    async with InfluxQLClient(settings) as client, Writer(settings) as writer:
        await writer.write([_change("cp-1", "gw-1")], rp=KEEP_RP)
        assert await load_bindings_store(bindings, client, None)
        assert bindings.get("cp-1") == "gw-1"
        first = bindings.refreshed_at
        task = asyncio.create_task(refresh_bindings_forever(bindings, client, 0.2))
        try:
            await writer.write([_change("cp-1", "gw-2"), _change("cp-2", "gw-2")], rp=KEEP_RP)
            for _ in range(100):  # up to 10 s: a refresh every 0.2 s
                if bindings.get("cp-2") is not None:
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
    assert (bindings.get("cp-1"), bindings.get("cp-2")) == ("gw-2", "gw-2")
    assert bindings.refreshed_at is not None
    assert first is not None
    assert bindings.refreshed_at > first
    assert bindings.refresh_errors == 0
