"""Settings bases: each service subclasses :class:`ServiceSettings` with its own env prefix.

Nested groups read from ``PREFIX_GROUP__FIELD`` (e.g. ``TELEMETRY_BRIDGE_MQTT__HOST``). Settings are
built in each service's ``__main__`` and passed in; nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemetry_common.topics import DEFAULT_ROOT, Topics


class MqttSettings(BaseModel):
    """How a service reaches the broker: MQTT 5 over TLS with its own client certificate."""

    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path = Path("pki/ca.crt")
    cert_file: Path = Path("pki/client.crt")
    key_file: Path = Path("pki/client.key")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    #: Session expiry for persistent sessions (MQTT 5); the broker keeps our subscriptions and
    #: queued QoS 1 messages this long while we are away.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)


class InfluxSettings(BaseModel):
    """Where readings are stored. ``api=v1`` speaks /write and /query (InfluxDB 1.x, and the
    v1-compatible API of 2.x/3.x); ``api=v2`` writes through influxdb-client's async client."""

    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v1"
    database: str = "telemetry"
    #: v1: basic-auth user/password (optional). v2: token, org, bucket.
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    #: v1 only: run CREATE DATABASE at start (needs an admin user when auth is on).
    create_database: bool = True

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, url: str) -> str:
        return url.rstrip("/")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    topic_root: str = DEFAULT_ROOT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: auto: JSON when stderr is not a TTY, readable text on a terminal.
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator("topic_root")
    @classmethod
    def _valid_root(cls, root: str) -> str:
        Topics(root)
        return root

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)
