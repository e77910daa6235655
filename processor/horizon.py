"""The oldest ``ts`` a reading may carry: by default the raw retention (``ts_too_old``).

A reading older than the duration of retention policy ``autogen`` (the raw readings') is
refused by InfluxDB 1.x ("points beyond retention policy dropped") or, just inside it, dropped
with its shard group soon after; and a reading weeks or decades back opens a shard of its own.
So unless ``MAX_AGE_DAYS`` is set (it then wins, whatever the retention), the horizon is
autogen's duration as InfluxDB reports it (``SHOW RETENTION POLICIES``), read before the first
batch and every ``HORIZON_REFRESH_S`` after: the rollup job sets it to its ``RAW_RETENTION``
(30d) after its first complete pass, and an operator may change it. While autogen keeps
readings forever (``INF``: before that pass, or without the rollup job) or its duration cannot
be read, ``MAX_AGE_FALLBACK_DAYS`` (366) applies. A failed read keeps the horizon it had (a
WARNING for the first of a run of failures).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from processor.settings import ProcessorSettings
from processor.validate import TsWindow
from telemetry_common.influx_query import InfluxError, InfluxQL
from telemetry_common.influxql import show_retention_policies_query
from telemetry_common.retention import go_duration
from telemetry_common.storage import RAW_RP

log = logging.getLogger(__name__)


def window_of(settings: ProcessorSettings) -> TsWindow:
    """The window the processor starts with (before the retention is read)."""
    days = settings.max_age_days or settings.max_age_fallback_days
    return TsWindow(
        max_future=timedelta(seconds=settings.max_future_s), max_age=timedelta(days=days)
    )


async def raw_retention(client: InfluxQL, database: str) -> timedelta | None:
    """The duration of ``autogen`` in ``database`` (None: kept forever, or no such policy)."""
    for series in await client.query(show_retention_policies_query(database)):
        for row in series.rows():
            if row.get("name") == RAW_RP:
                return go_duration(str(row.get("duration", "0s")))
    return None


class Horizon:
    """Keeps ``window.max_age`` (the window the preparer reads) at the raw retention."""

    def __init__(self, window: TsWindow, settings: ProcessorSettings, database: str) -> None:
        self.window = window
        self._explicit = settings.max_age_days is not None
        self._fallback = timedelta(days=settings.max_age_fallback_days)
        self._every_s = settings.horizon_refresh_s
        self._database = database
        self._failing = False
        self._said = False  # the horizon was logged
        #: Where the current horizon comes from: ``setting``, ``retention`` or ``fallback``.
        self.source = "setting" if self._explicit else "fallback"

    async def refresh(self, client: InfluxQL) -> None:
        """Read autogen's duration and move the horizon to it (nothing when MAX_AGE_DAYS is set;
        a failed read keeps the horizon as it is)."""
        if self._explicit:
            return
        try:
            retention = await raw_retention(client, self._database)
        except (InfluxError, OSError) as e:
            # Once per run of failures (a store that cannot answer it would repeat it forever).
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(
                level, "raw retention not read (ts horizon stays %s): %s", self.window.max_age, e
            )
            self._failing = True
            return
        self._failing = False
        if retention is None:
            age, source = self._fallback, "fallback"
        else:
            age, source = retention, "retention"
        if not self._said or (age, source) != (self.window.max_age, self.source):
            self._said = True
            log.info(
                "ts horizon: readings older than %s are dead-lettered ts_too_old (%s)",
                age,
                f"the raw retention of {RAW_RP}"
                if retention is not None
                else f"{RAW_RP} keeps forever: MAX_AGE_FALLBACK_DAYS",
            )
        self.window.max_age, self.source = age, source

    async def run(self, client: InfluxQL) -> None:
        """Refresh every ``HORIZON_REFRESH_S`` until cancelled (a task of the processor)."""
        if self._explicit:
            return
        while True:
            await asyncio.sleep(self._every_s)
            await self.refresh(client)
