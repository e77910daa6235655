"""Edge agent settings: environment variables prefixed ``TELEMETRY_EDGE_``, and the same
``KEY=VALUE`` lines in a configuration file (:func:`env_file`; the Debian package installs
``/etc/charger-telemetry/edge.env``). Variables in the environment win over the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from edge_agent.budget import Budget
from edge_agent.enroll import EnrollError, check_url
from edge_agent.ocpp.settings import OcppSettings
from telemetry_common.errors import ConfigError
from telemetry_common.ids import Id
from telemetry_common.schema import MAX_BATCH_BYTES, MAX_BATCH_READINGS
from telemetry_common.settings import MqttSettings, ServiceSettings, SettingsGroup


class SimSettings(SettingsGroup):
    """The ``sim`` source: simulated chargers."""

    chargers: int = Field(default=2, ge=1, le=10_000)
    """Simulated chargers."""
    interval_s: float = Field(default=1.0, gt=0)
    """Each simulated charger sends a reading this often."""
    seed: int | None = None
    """Random seed, for repeatable readings (unset: random)."""


class OutboxSettings(SettingsGroup):
    """The outbox budget (``TELEMETRY_EDGE_OUTBOX__*``); see docs/edge-agent.md for the policy.

    The defaults hold about 5.5 hours of 100 chargers at 1 Hz (a reading is ~250 bytes).
    """

    max_rows: int = Field(default=2_000_000, ge=1)
    """Most readings the outbox holds (the budget)."""
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=4096)
    """Most reading bytes it holds (the stored JSON), not the file size: the file is ~1.3x this plus
    the WAL."""
    max_parked_rows: int = Field(default=100_000, ge=0)
    """Refused batches kept for the operator; beyond this the oldest parked rows are dropped."""

    def budget(self) -> Budget:
        return Budget(self.max_rows, self.max_bytes, self.max_parked_rows)


class EdgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_EDGE_")

    gateway_id: Id
    """This gateway's id: the CN of its certificate, its MQTT client id and its topic level."""
    outbox_path: Path = Path("edge-outbox.sqlite3")
    """The outbox's SQLite file."""
    outbox: OutboxSettings = OutboxSettings()
    """The outbox budget (docs/edge-agent.md)."""
    mqtt: MqttSettings = MqttSettings()
    """The broker, with this gateway's certificate."""
    sim: SimSettings = SimSettings()
    """The ``sim`` source."""
    ocpp: OcppSettings = OcppSettings()
    """The ``ocpp`` source's central-system endpoint (docs/ocpp.md)."""
    batch_max_readings: int = Field(default=1_000, ge=1, le=MAX_BATCH_READINGS)
    """Most readings per MQTT message."""
    batch_max_bytes: int = Field(default=MAX_BATCH_BYTES, ge=4096, le=MAX_BATCH_BYTES)
    """Most payload bytes per MQTT message."""
    publish_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for a PUBACK before treating the batch as not delivered (it stays in the
    outbox and is sent again; a replay is harmless)."""
    linger_s: float = Field(default=0.05, ge=0, le=5)
    """A live batch that is not full waits until its oldest reading is this old, so readings
    captured together travel together (fewer, fuller messages); 0 = send at once."""
    delete_after: Literal["stored", "puback"] = "stored"
    """When a published reading leaves the outbox: ``stored``, once a bridge acknowledges that it
    is stored (``{root}/{gateway}/stored``; the broker is then not part of the durability
    chain); ``puback``, once the broker acknowledged it (for a cloud that sends no stored
    acknowledgements: a broker crash, full queue or foreign subscriber can then lose it)."""
    stored_timeout_s: float = Field(default=30.0, gt=0)
    """No stored acknowledgement at all for this long after a batch's PUBACK (or after the last
    acknowledgement) sends everything unconfirmed again, and the timeout doubles, up to ten times
    this; it adapts to the measured confirmation latency (never below this). A batch still
    unconfirmed this long after a later one was confirmed is sent again alone. Keep it above the
    bridges' acknowledgement delay (``ACK_INTERVAL_S``, longer for a fleet beyond their
    ``ACK_MAX_RATE``) and their disorder."""
    max_unconfirmed: int = Field(default=50_000, ge=1)
    """Most readings sent and not yet confirmed stored: beyond it the publisher waits, so during
    a cloud outage the backlog stays in the outbox instead of piling up in the broker. It bounds
    one gateway's rate to about this many per round trip (publish, the bridges' batch and write,
    the acknowledgement: ~0.2-0.5 s); memory ~100 bytes per reading."""
    max_inflight_batches: int = Field(default=4, ge=1, le=64)
    """Batches published and awaiting their PUBACK at once (one slot is kept for live readings)."""
    drain_rate: float = Field(default=0.0, ge=0)
    """Backlog drain rate in readings/s (0 = as fast as the broker acknowledges); set it on metered
    or slow links. Live readings are never paced."""
    reconnect_max_s: float = Field(default=30.0, ge=1, le=3600)
    """Cap of the capped exponential backoff (with jitter) for reconnects and publish retries."""
    state_interval_s: float = Field(default=60.0, gt=0, le=3600)
    """While connected, the gateway's state (``online`` with its agent version, outbox depth,
    oldest unsent reading, unconfirmed readings, certificate expiry and clock) is republished
    retained on ``{root}/{gateway}/state`` this often (the birth at each connect carries the
    same)."""
    max_age_days: float = Field(default=30.0, gt=0)
    """Readings stamped further back than this are counted (``readings_too_old``) and logged at
    most once a minute, and still sent: the cloud dead-letters a reading older than its raw
    retention (30 days by default; the agent does not know the cloud's) as ``ts_too_old``,
    replayable (edge_agent.clock)."""
    clock_max_skew_s: float = Field(default=60.0, gt=0)
    """This gateway's clock is reported unsynchronised (source ``cloud``) when it is more than
    this off the bridges' clock, as the stored acknowledgements tell it (edge_agent.clock); the
    cloud refuses readings more than its MAX_FUTURE_S (300 s) ahead."""
    enrollment_url: str | None = None
    """The API that signs this gateway's certificates, ``https://HOST[:PORT]``: the running agent
    renews its certificate there (``POST /v1/enrollment/renew``) ``RENEW_BEFORE_DAYS`` before
    it expires; unset, no renewal (docs/edge-agent.md#certificate-renewal)."""
    enrollment_ca_file: Path | None = None
    """CA certificate the enrollment URL's TLS certificate is checked against (unset: the
    system's CAs)."""
    renew_before_days: float = Field(default=30.0, gt=0)
    """Renew the certificate when it expires within this many days (fractions allowed)."""
    renew_check_s: float = Field(default=3600.0, gt=0)
    """How often the certificate's expiry is looked at; a failed renewal is retried after 10 s,
    doubling (with jitter), at most this."""
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus metrics (``/metrics``)."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Their port (0 = off)."""

    @field_validator("enrollment_url")
    @classmethod
    def _secure_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            return check_url(url)
        except EnrollError as exc:
            raise ValueError(str(exc)) from exc


ENV_FILE_VAR = "TELEMETRY_EDGE_ENV_FILE"
"""Names the configuration file; set but empty: no file."""
DEFAULT_ENV_FILE = Path("/etc/charger-telemetry/edge.env")
"""Read when ``TELEMETRY_EDGE_ENV_FILE`` is unset, if it exists and is readable."""


def env_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file to read: ``$TELEMETRY_EDGE_ENV_FILE`` (which must then be a
    readable file; empty: none), else ``/etc/charger-telemetry/edge.env`` if this user can read
    it (an installed gateway's), else none."""
    env = os.environ if environ is None else environ
    named = env.get(ENV_FILE_VAR)
    if named is not None:
        if not named:
            return None
        path = Path(named)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(ENV_FILE_VAR, f"{named} is not a readable file")
        return path
    if DEFAULT_ENV_FILE.is_file() and os.access(DEFAULT_ENV_FILE, os.R_OK):
        return DEFAULT_ENV_FILE
    return None


def load_edge_settings(environ: Mapping[str, str] | None = None) -> EdgeSettings:
    """The agent's settings from the environment and its configuration file (:func:`env_file`).
    Raises ``ConfigError`` for an unreadable named file, ``ValidationError`` for bad values."""
    return EdgeSettings(_env_file=env_file(environ))
