"""The ``ts_too_old`` horizon against a real InfluxDB 1.x: the raw retention (autogen's duration)
when it has one, the fallback while it keeps forever, the setting when one is given, and the
horizon kept as it was when InfluxDB cannot be reached."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from processor.horizon import Horizon, window_of
from processor.settings import ProcessorSettings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.settings import InfluxSettings
from telemetry_stack.servers import free_port
from tests.support.fixtures import InfluxTarget
from tests.support.influx import influxql

pytestmark = pytest.mark.integration


def _alter(db: InfluxTarget, duration: str) -> None:
    influxql(
        db.url,
        db.database,
        f'ALTER RETENTION POLICY "autogen" ON "{db.database}" DURATION {duration}',
    )


async def test_the_horizon_follows_the_raw_retention(influx_db: InfluxTarget) -> None:
    """A new database keeps forever (INF): the fallback, 366 days. Once autogen is 30 days (as
    the rollup job sets it), 30 days, read again by the periodic refresh; back to INF, the
    fallback again."""
    settings = ProcessorSettings(horizon_refresh_s=0.05)
    window = window_of(settings)
    horizon = Horizon(window, settings, influx_db.database)
    async with InfluxQLClient(InfluxSettings(url=influx_db.url, database=influx_db.database)) as c:
        await horizon.refresh(c)
        assert (window.max_age, horizon.source) == (timedelta(days=366), "fallback")
        assert window.max_future == timedelta(minutes=5)

        _alter(influx_db, "30d")
        task = asyncio.create_task(horizon.run(c))
        try:
            for _ in range(100):
                if window.max_age == timedelta(days=30):
                    break
                await asyncio.sleep(0.05)
            assert (window.max_age, horizon.source) == (timedelta(days=30), "retention")
        finally:
            task.cancel()
        _alter(influx_db, "INF")
        await horizon.refresh(c)
        assert (window.max_age, horizon.source) == (timedelta(days=366), "fallback")


async def test_an_explicit_max_age_wins_over_the_retention(influx_db: InfluxTarget) -> None:
    _alter(influx_db, "30d")
    settings = ProcessorSettings(max_age_days=400)
    window = window_of(settings)
    horizon = Horizon(window, settings, influx_db.database)
    async with InfluxQLClient(InfluxSettings(url=influx_db.url, database=influx_db.database)) as c:
        await horizon.refresh(c)
    assert (window.max_age, horizon.source) == (timedelta(days=400), "setting")


async def test_influxdb_unreachable_keeps_the_horizon(influx_db: InfluxTarget) -> None:
    """A failed read changes nothing (and raises nothing: the refresh task goes on)."""
    _alter(influx_db, "30d")
    settings = ProcessorSettings()
    window = window_of(settings)
    horizon = Horizon(window, settings, influx_db.database)
    async with InfluxQLClient(InfluxSettings(url=influx_db.url, database=influx_db.database)) as c:
        await horizon.refresh(c)
    assert window.max_age == timedelta(days=30)
    nowhere = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database=influx_db.database)
    async with InfluxQLClient(nowhere) as c:
        await horizon.refresh(c)
    assert (window.max_age, horizon.source) == (timedelta(days=30), "retention")
