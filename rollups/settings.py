"""``telemetry-rollups`` settings: environment variables prefixed ``TELEMETRY_ROLLUPS_``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints, field_validator
from pydantic_settings import SettingsConfigDict

from telemetry_common.settings import InfluxSettings, ServiceSettings
from telemetry_common.storage import LATE_AFTER_S

#: An InfluxQL duration (``30d``, ``12h``, ``4w``, ``90m``); retention durations also take ``INF``.
Duration = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*(m|h|d|w)$")]
Retention = Annotated[str, StringConstraints(pattern=r"^([1-9][0-9]*(m|h|d|w)|INF)$")]
_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def to_timedelta(duration: str) -> timedelta | None:
    """``30d`` as a timedelta; ``INF`` as None (kept forever)."""
    if duration == "INF":
        return None
    return timedelta(seconds=int(duration[:-1]) * _UNITS[duration[-1]])


class RollupsInfluxSettings(InfluxSettings):
    """InfluxDB as the rollup job reaches it: heavier queries, and no CREATE DATABASE (the
    bridge creates the database; the job writes into it)."""

    timeout_s: float = Field(default=60.0, gt=0)
    """Timeout of one InfluxDB request: a rollup query aggregates up to QUERY_MAX_ROWS buckets."""
    create_database: bool = False
    """v1 only: run CREATE DATABASE at start."""


class RollupsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_ROLLUPS_")

    @field_validator("lookback")
    @classmethod
    def _covers_the_marks(cls, value: str) -> str:
        delta = to_timedelta(value)
        if delta is not None and delta < timedelta(seconds=LATE_AFTER_S):
            raise ValueError(
                f"must be at least {LATE_AFTER_S // 3600}h: readings stored less late than that "
                "are not marked by the bridges, only this look back finds them"
            )
        return value

    influx: RollupsInfluxSettings = RollupsInfluxSettings()
    """Where the raw readings are read and the rollups written (the bridge's database)."""
    interval_s: float = Field(default=300.0, gt=0)
    """A pass every this many seconds: a pass has a fixed cost (one request), so a longer
    interval costs less per reading, and the rollups lag by up to this much more."""
    settle_s: int = Field(default=60, ge=0)
    """A 1-minute bucket is rolled up once it ended this long ago (readings still in flight)."""
    lookback: Duration = "2h"
    """Each pass counts the raw readings of this last stretch that are already rolled up and
    compares them with the rollups' counts (all series together, then per series when they
    differ); a series that changed (late readings) is recomputed there, with the hours it
    touches. Readings stored more than an hour late (a drained backlog, a replayed dead letter)
    are marked by the bridges and recomputed from the marks, so at least ``1h``."""
    late_check_every: Duration = "10m"
    """The check for late readings (LOOKBACK) runs on the first pass and then once this much
    time passed since the last one (``1m``: every pass), over LOOKBACK before the previous
    check on: a late reading is in the rollups at most this much (plus a pass) after it was
    stored. Each check has InfluxDB count the raw readings of LOOKBACK (~2 s of its CPU for
    1,000 chargers every 5 s)."""
    raw_retention: Retention = "30d"
    """Duration of the raw readings' retention policy ``autogen`` (set after the first complete
    pass, so nothing is dropped before it is rolled up)."""
    raw_shard_duration: Duration = "1d"
    """Shard-group duration of ``autogen`` (InfluxDB drops whole shard groups: raw readings are
    kept up to this much longer than RAW_RETENTION)."""
    rollup_1m_retention: Retention = "365d"
    """Duration of retention policy ``rollup_1m`` (measurement ``readings_1m``)."""
    rollup_1m_shard_duration: Duration = "7d"
    """Its shard-group duration."""
    rollup_1h_retention: Retention = "1825d"
    """Duration of retention policy ``rollup_1h`` (measurement ``readings_1h``, and the job's
    progress ``rollup_state``)."""
    rollup_1h_shard_duration: Duration = "30d"
    """Its shard-group duration."""
    manage_retention: bool = True
    """InfluxDB 1.x: create/alter the retention policies at start (needs an admin user when auth
    is on). Off, or with ``INFLUX__API=v2``: the job only logs what the operator must create
    (docs/deploy.md)."""
    write_path: Literal["auto", "into", "lines"] = "auto"
    """How the rollup buckets are written. ``into``: InfluxDB 1.x writes them itself
    (``SELECT ... INTO``; the rows never cross HTTP, the job's cost per pass is about one
    request). ``lines``: the job reads the rows and writes them as line protocol (InfluxDB
    2.x/3.x, whose InfluxQL has no ``INTO``). ``auto``: ``into`` when InfluxDB's ``/ping``
    announces a 1.x version (and ``INFLUX__API=v1``), else ``lines``."""
    chunk: Duration = "1d"
    """A pass over a long stretch (the first pass, a backfill, a job that was down) goes forward
    this much at a time, its progress stored after each."""
    query_max_rows: int = Field(default=5_000, ge=100)
    """At most this many rows (bucket x series) per query: queries are cut by time and series."""
    series_per_query: int = Field(default=500, ge=1)
    """At most this many chargers named in one rollup query (a listing of series is paged by
    QUERY_MAX_ROWS)."""
    http_host: str = "127.0.0.1"
    """Address of /metrics and /healthz."""
    http_port: int = Field(default=9466, ge=0, le=65535)
    """Their port; 0 turns them off."""
