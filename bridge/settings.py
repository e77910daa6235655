"""``telemetry-bridge`` settings: environment variables prefixed ``TELEMETRY_BRIDGE_``: the
intake's own (broker session, flow, operations endpoints) and the processor's
(:class:`processor.settings.ProcessorSettings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from processor.settings import ProcessorSettings
from telemetry_common.ids import Id
from telemetry_common.settings import InfluxSettings, MqttSettings, ServiceSettings
from telemetry_common.topics import SHARE_GROUP

DEFAULT_CLIENT_ID: Final = "telemetry-bridge-1"


class BridgeSettings(ServiceSettings, ProcessorSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_BRIDGE_")

    mqtt: MqttSettings = MqttSettings(
        cert_file=Path("pki/telemetry-bridge.crt"), key_file=Path("pki/telemetry-bridge.key")
    )
    """The broker's services listener, with the bridge's certificate (CN ``telemetry-bridge``,
    signed by the services CA)."""
    influx: InfluxSettings = InfluxSettings()
    """Where readings are written."""
    client_id: Id = DEFAULT_CLIENT_ID
    """MQTT client id, fixed per bridge process: the broker keeps this session (and its queue)
    across restarts. Make it and the share group unguessable in a deployment (the bridge warns
    otherwise): the broker cannot stop a gateway certificate from joining the share group
    (mosquitto/README.md). Logs and /status show both by their public names."""
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
    http_host: str = "127.0.0.1"
    """Address of /metrics, /healthz, /readyz and /status."""
    http_port: int = Field(default=9464, ge=0, le=65535)
    """Their port; 0 turns them off."""
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    """On SIGTERM the batch in hand is finished and acknowledged; after this long, we stop anyway
    (what is unacknowledged is redelivered)."""
