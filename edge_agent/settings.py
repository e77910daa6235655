"""Edge agent settings: environment variables prefixed ``TELEMETRY_EDGE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from telemetry_common.ids import Id
from telemetry_common.schema import MAX_BATCH_BYTES, MAX_BATCH_READINGS
from telemetry_common.settings import MqttSettings, ServiceSettings


class SimSettings(BaseModel):
    chargers: int = Field(default=2, ge=1, le=10_000)
    interval_s: float = Field(default=1.0, gt=0)
    seed: int | None = None


class EdgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_EDGE_")

    gateway_id: Id
    outbox_path: Path = Path("edge-outbox.sqlite3")
    mqtt: MqttSettings = MqttSettings()
    sim: SimSettings = SimSettings()
    batch_max_readings: int = Field(default=1_000, ge=1, le=MAX_BATCH_READINGS)
    batch_max_bytes: int = Field(default=MAX_BATCH_BYTES, ge=4096, le=MAX_BATCH_BYTES)
    #: How long to wait for a PUBACK before treating the batch as not delivered (it stays
    #: in the outbox and is sent again; a replay is harmless).
    publish_timeout_s: float = Field(default=30.0, gt=0)
