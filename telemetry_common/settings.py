"""Settings bases: each service subclasses :class:`ServiceSettings` with its own env prefix.

Nested groups read from ``PREFIX_GROUP__FIELD`` (e.g. ``TELEMETRY_BRIDGE_MQTT__HOST``). Settings are
built in each service's ``__main__`` and passed in; nothing is read at import time.
"""

from __future__ import annotations

import json
import typing
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


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def env_for(settings: type[BaseSettings], **values: object) -> dict[str, str]:
    """The environment variables that give ``settings`` these ``values``, their names derived
    from the model (prefix, field name, ``__`` for a nested group), so no other place types them:

    >>> env_for(BridgeSettings, client_id="b-1", mqtt={"port": 8883})
    {'TELEMETRY_BRIDGE_CLIENT_ID': 'b-1', 'TELEMETRY_BRIDGE_MQTT__PORT': '8883'}

    A name the model does not have raises ``KeyError`` (a typo never passes silently). A dict
    given for a field that is itself a model is spelled as nested variables; any other dict or
    list is JSON.
    """
    prefix = str(settings.model_config.get("env_prefix", ""))
    delimiter = str(settings.model_config.get("env_nested_delimiter") or "__")
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], name: str, items: dict[str, object]) -> None:
        for key, value in items.items():
            field = model.model_fields.get(key)
            if field is None:
                raise KeyError(f"{model.__name__} has no setting {key!r}")
            sub = _model_of(field.annotation)
            if sub is not None and isinstance(value, dict):
                walk(sub, f"{name}{key.upper()}{delimiter}", value)
            elif value is not None:
                out[f"{name}{key.upper()}"] = _env_value(value)

    walk(settings, prefix, values)
    return out


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The BaseModel in ``annotation`` (``M`` or ``M | None``), if any."""
    candidates = typing.get_args(annotation) or (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None
