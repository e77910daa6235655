"""``telemetry-sessions`` settings: environment variables prefixed ``TELEMETRY_SESSIONS_``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final

from pydantic import Field, StringConstraints, field_validator
from pydantic_settings import SettingsConfigDict

from telemetry_common.settings import InfluxSettings, ServiceSettings
from telemetry_common.storage import LATE_AFTER_S

#: A duration (``90s``, ``30m``, ``4h``, ``7d``, ``1w``).
Duration = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*(s|m|h|d|w)$")]
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def to_timedelta(duration: str) -> timedelta:
    """``4h`` as a timedelta."""
    return timedelta(seconds=int(duration[:-1]) * _UNITS[duration[-1]])


class SessionsInfluxSettings(InfluxSettings):
    """InfluxDB as the sessions job reaches it (no CREATE DATABASE: the bridge creates it)."""

    timeout_s: float = Field(default=60.0, gt=0)
    """Timeout of one InfluxDB request (a request reads the readings of up to 50 sessions)."""
    create_database: bool = False
    """v1 only: run CREATE DATABASE at start."""


class SessionsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_SESSIONS_")

    @field_validator("lookback")
    @classmethod
    def _covers_the_marks(cls, value: str) -> str:
        if to_timedelta(value) < timedelta(seconds=LATE_AFTER_S):
            raise ValueError(
                f"must be at least {LATE_AFTER_S // 3600}h: readings stored less late than that "
                "are not marked by the bridges, only this look back finds them"
            )
        return value

    influx: SessionsInfluxSettings = SessionsInfluxSettings()
    """Where the readings are read and the sessions written (the bridge's database)."""
    interval_s: float = Field(default=30.0, gt=0)
    """A pass every this many seconds: the sessions lag the readings by up to this much."""
    silence: Duration = "4h"
    """A session without a stop, whose connector has no newer reading, ends (``end_cause``
    ``silence``) once its newest reading is this old."""
    lookback: Duration = "1h"
    """Every LOOKBACK_EVERY (and at the first pass) the transactions of the readings stamped in
    this last stretch are recomputed: readings stored late but less than an hour late are not
    marked by the bridges, so at least ``1h``."""
    lookback_every: Duration = "10m"
    """How often the LOOKBACK sweep runs, computing every session it touches whole (between
    sweeps a pass reads the readings stamped since the previous pass, less a minute, and
    carries the active sessions on with them: a reading stored more than a minute late joins
    its session at the next sweep)."""
    max_session: Duration = "7d"
    """The longest session looked for: a transaction first seen (or marked late) is read from
    this far before the readings that named it."""
    max_sessions_per_pass: int = Field(default=2_000, ge=1)
    """At most this many sessions recomputed per pass; the rest wait for the next pass."""
    http_host: str = "127.0.0.1"
    """Address of /metrics and /healthz."""
    http_port: int = Field(default=9467, ge=0, le=65535)
    """Their port; 0 turns them off."""
