"""Edge agent settings: environment variables prefixed ``TELEMETRY_EDGE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from edge_agent.budget import Budget
from edge_agent.ocpp.settings import OcppSettings
from telemetry_common.ids import Id
from telemetry_common.schema import MAX_BATCH_BYTES, MAX_BATCH_READINGS
from telemetry_common.settings import MqttSettings, ServiceSettings


class SimSettings(BaseModel):
    chargers: int = Field(default=2, ge=1, le=10_000)
    interval_s: float = Field(default=1.0, gt=0)
    seed: int | None = None


class OutboxSettings(BaseModel):
    """The outbox budget (``TELEMETRY_EDGE_OUTBOX__*``); see docs/edge-agent.md for the policy.

    The defaults hold about 5.5 hours of 100 chargers at 1 Hz (a reading is ~250 bytes).
    """

    max_rows: int = Field(default=2_000_000, ge=1)
    #: Reading bytes (the stored JSON), not the file size: the file is ~1.3x this plus the WAL.
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=4096)
    #: Refused batches kept for the operator; beyond this the oldest parked rows are dropped.
    max_parked_rows: int = Field(default=100_000, ge=0)

    def budget(self) -> Budget:
        return Budget(self.max_rows, self.max_bytes, self.max_parked_rows)


class EdgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_EDGE_")

    gateway_id: Id
    outbox_path: Path = Path("edge-outbox.sqlite3")
    outbox: OutboxSettings = OutboxSettings()
    mqtt: MqttSettings = MqttSettings()
    sim: SimSettings = SimSettings()
    #: The ``ocpp`` source's central-system endpoint (TELEMETRY_EDGE_OCPP__HOST/__PORT/...).
    ocpp: OcppSettings = OcppSettings()
    batch_max_readings: int = Field(default=1_000, ge=1, le=MAX_BATCH_READINGS)
    batch_max_bytes: int = Field(default=MAX_BATCH_BYTES, ge=4096, le=MAX_BATCH_BYTES)
    #: How long to wait for a PUBACK before treating the batch as not delivered (it stays
    #: in the outbox and is sent again; a replay is harmless).
    publish_timeout_s: float = Field(default=30.0, gt=0)
    #: A live batch that is not full waits until its oldest reading is this old, so readings
    #: captured together travel together (fewer, fuller messages); 0 = send at once.
    linger_s: float = Field(default=0.05, ge=0, le=5)
    #: Batches published and awaiting their PUBACK at once (one slot is kept for live readings).
    max_inflight_batches: int = Field(default=4, ge=1, le=64)
    #: Backlog drain rate in readings/s (0 = as fast as the broker acknowledges); live readings
    #: are never paced.
    drain_rate: float = Field(default=0.0, ge=0)
    #: Cap of the capped exponential backoff (with jitter) for reconnects and publish retries.
    reconnect_max_s: float = Field(default=30.0, ge=1, le=3600)
    #: Prometheus metrics on http://METRICS_HOST:METRICS_PORT/metrics (0 = off).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
