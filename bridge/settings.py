"""Bridge + processor settings: environment variables prefixed ``TELEMETRY_BRIDGE_``."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from telemetry_common.ids import Id
from telemetry_common.settings import InfluxSettings, MqttSettings, ServiceSettings
from telemetry_common.topics import SHARE_GROUP

DEFAULT_CLIENT_ID: Final = "telemetry-bridge-1"


class BridgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_BRIDGE_")

    mqtt: MqttSettings = MqttSettings(
        cert_file=Path("pki/telemetry-bridge.crt"), key_file=Path("pki/telemetry-bridge.key")
    )
    """The broker, with the bridge's certificate (CN ``telemetry-bridge``)."""
    influx: InfluxSettings = InfluxSettings()
    """Where readings are written."""
    client_id: Id = DEFAULT_CLIENT_ID
    """MQTT client id, fixed per bridge process: the broker keeps this session (and its queue)
    across restarts. Make it and the share group unguessable in a deployment (the bridge warns
    otherwise): the broker cannot stop a gateway certificate from using either
    (mosquitto/README.md)."""
    share_group: Id = SHARE_GROUP
    """Shared-subscription group of the bridges (``$share/GROUP/...``)."""
    max_inflight: int = Field(default=1000, ge=1, le=65_535)
    """MQTT 5 Receive Maximum: how many unacknowledged messages the broker may send us. This is the
    bridge's backpressure: when InfluxDB is slow, the broker holds the rest."""
    batch_max_messages: int = Field(default=500, ge=1)
    """A batch ends at this many messages."""
    batch_max_wait_s: float = Field(default=0.1, gt=0)
    """... or once its first message has waited this long."""
    batch_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """... or once its payloads add up to this many bytes."""
    pipeline_depth: int = Field(default=3, ge=1, le=16)
    """Batches in hand at once (taken, being prepared or being written): while earlier ones are
    written, the next is prepared. Memory grows with it (a batch is ~10 MB decoded at
    BATCH_MAX_BYTES); 1 takes the next batch only once the last one is acknowledged."""
    write_max_lines: int = Field(default=10_000, ge=1, le=100_000)
    """Lines per InfluxDB write request (a batch is written in requests of this size); the default
    takes a whole batch (BATCH_MAX_BYTES of ~280-byte readings) in one request: fewer, larger
    writes cost InfluxDB less per point."""
    write_concurrency: int = Field(default=2, ge=1, le=16)
    """InfluxDB write requests in flight at once (the requests of one batch go concurrently)."""
    max_future_s: float = Field(default=300.0, ge=0)
    """Readings stamped further ahead than this are dead-lettered (a clock fault at the edge)."""
    max_backoff_s: float = Field(default=30.0, gt=0)
    """Cap of the backoff between InfluxDB retries."""
    live_interval_s: float = Field(default=1.0, ge=0)
    """At most one live publish per charger per this many seconds (newer values wait)."""
    live_max_rate: float = Field(default=500.0, ge=0)
    """At most this many live publishes per second in all (0: no limit); the chargers published
    longest ago go first, so a large fleet refreshes less often instead of costing more."""
    live_busy_rate: float = Field(default=50.0, ge=0)
    """... and at most this many while ingestion is behind (messages wait beyond the batches in
    hand; 0: none then): a live publish costs ~250 us of CPU that storing needs more."""
    bindings_file: Path | None = None
    """JSON object {"charger_id": "gateway_id"}: only these bindings are accepted. Unset: a charger
    is bound to the first gateway that sends for it (remembered through InfluxDB)."""
    http_host: str = "127.0.0.1"
    """Address of /metrics, /healthz, /readyz and /status."""
    http_port: int = Field(default=9464, ge=0, le=65535)
    """Their port; 0 turns them off."""
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    """On SIGTERM the batch in hand is finished and acknowledged; after this long, we stop anyway
    (what is unacknowledged is redelivered)."""
    gap_grace_s: float = Field(default=30.0, gt=0)
    """A suspected seq gap is checked against InfluxDB after this long (other bridges of the share
    group may have stored the readings), and again at this interval while open."""
