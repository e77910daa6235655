"""Settings bases: each service subclasses :class:`ServiceSettings` with its own env prefix.

Nested groups (:class:`SettingsGroup`) read from ``PREFIX_GROUP__FIELD`` (e.g.
``TELEMETRY_BRIDGE_MQTT__HOST``). Settings are built in each service's ``__main__`` and passed in;
nothing is read at import time. The docstring under a field is its description (pydantic's
``use_attribute_docstrings``), which docs/settings.md shows (``telemetry_common.settings_doc``);
no other place types a variable's name: ``env_for`` and ``env_name`` derive them.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemetry_common.topics import DEFAULT_ROOT, Topics


class SettingsGroup(BaseModel):
    """A nested group of settings (``PREFIX_GROUP__FIELD``). Like :class:`ServiceSettings`, it
    takes each field's description from the docstring under it (docs/settings.md shows them)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class MqttSettings(SettingsGroup):
    """How a service reaches the broker: MQTT 5 over TLS with its own client certificate."""

    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: int = Field(default=8883, ge=1, le=65535)
    """Broker TLS port."""
    ca_file: Path = Path("pki/ca.crt")
    """CA certificate the broker's certificate is checked against."""
    cert_file: Path = Path("pki/client.crt")
    """This client's certificate; its CN is the identity the broker's ACL knows."""
    key_file: Path = Path("pki/client.key")
    """Private key of ``cert_file``."""
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    """MQTT keep-alive interval (seconds)."""
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    """Session expiry of the persistent session (MQTT 5): the broker keeps our subscriptions and
    queued QoS 1 messages this long while we are away."""


class InfluxSettings(SettingsGroup):
    """Where readings are stored. ``api=v1`` speaks /write and /query (InfluxDB 1.x, and the
    v1-compatible API of 2.x/3.x); ``api=v2`` writes through influxdb-client's async client."""

    url: str = "http://127.0.0.1:8086"
    """InfluxDB base URL."""
    api: Literal["v1", "v2"] = "v1"
    """``v1``: /write and /query (InfluxDB 1.x, or the v1-compatible API of 2.x/3.x); ``v2``: writes
    through influxdb-client (token, org, bucket)."""
    database: str = "telemetry"
    """Database (v1) the readings live in."""
    username: str | None = None
    """v1: basic-auth user (optional)."""
    password: SecretStr | None = None
    """v1: basic-auth password."""
    token: SecretStr | None = None
    """v2 (or 2.x's v1 API): API token."""
    org: str | None = None
    """v2: organisation."""
    bucket: str | None = None
    """v2: bucket."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of one InfluxDB request."""
    create_database: bool = True
    """v1 only: run CREATE DATABASE at start (needs an admin user when auth is on)."""

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, url: str) -> str:
        return url.rstrip("/")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    topic_root: str = DEFAULT_ROOT
    """First topic levels of every topic the pipeline uses."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """``auto``: JSON when stderr is not a terminal, readable text on one."""

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


def settings_errors(settings: type[BaseSettings], exc: ValidationError) -> list[str]:
    """One line per error of ``exc`` (raised building ``settings``), named by its variable:
    ``TELEMETRY_BRIDGE_MQTT__PORT: Input should be ...``."""
    prefix, delimiter = _prefix_and_delimiter(settings)
    return [
        f"{prefix}{delimiter.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]


def _prefix_and_delimiter(settings: type[BaseModel]) -> tuple[str, str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return prefix, str(settings.model_config.get("env_nested_delimiter") or "__")


def _field(model: type[BaseModel], key: str) -> FieldInfo:
    field = model.model_fields.get(key)
    if field is None:
        raise KeyError(f"{model.__name__} has no setting {key!r}")
    return field


def env_for(settings: type[BaseSettings], **values: object) -> dict[str, str]:
    """The environment variables that give ``settings`` these ``values``, their names derived
    from the model (prefix, field name, ``__`` for a nested group), so no other place types them:

    >>> env_for(BridgeSettings, client_id="b-1", mqtt={"port": 8883})
    {'TELEMETRY_BRIDGE_CLIENT_ID': 'b-1', 'TELEMETRY_BRIDGE_MQTT__PORT': '8883'}

    A name the model does not have raises ``KeyError`` (a typo never passes silently). A dict
    given for a field that is itself a model is spelled as nested variables; any other dict or
    list is JSON.
    """
    prefix, delimiter = _prefix_and_delimiter(settings)
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], name: str, items: dict[str, object]) -> None:
        for key, value in items.items():
            sub = _model_of(_field(model, key).annotation)
            if sub is not None and isinstance(value, dict):
                walk(sub, f"{name}{key.upper()}{delimiter}", value)
            elif value is not None:
                out[f"{name}{key.upper()}"] = _env_value(value)

    walk(settings, prefix, values)
    return out


def env_name(settings: type[BaseModel], *path: str) -> str:
    """The name of the variable that sets ``path`` (a field, or a group then its field):

    >>> env_name(BridgeSettings, "mqtt", "host")
    'TELEMETRY_BRIDGE_MQTT__HOST'

    Raises ``KeyError`` for a name the model does not have.
    """
    prefix, delimiter = _prefix_and_delimiter(settings)
    model: type[BaseModel] | None = settings
    for key in path[:-1]:
        if model is None:
            raise KeyError(f"{key!r} is not inside a settings group")
        model = _model_of(_field(model, key).annotation)
    if model is None or not path:
        raise KeyError(f"{'.'.join(path)!r} names no setting")
    _field(model, path[-1])
    return prefix + delimiter.join(key.upper() for key in path)


@dataclass(frozen=True)
class Setting:
    """One environment variable a settings model reads (or, with ``group``, the prefix of a
    nested group's variables, e.g. ``TELEMETRY_API_MQTT__``)."""

    env: str
    annotation: object
    #: The value when the variable is unset; meaningless when ``required``.
    default: object
    required: bool
    description: str
    group: bool = False


def settings_of(settings: type[BaseSettings]) -> Iterator[Setting]:
    """Every variable ``settings`` reads, in field order, nested groups included, each with the
    default the service really gets (a group's default instance overrides its model's defaults,
    e.g. the bridge's own certificate paths)."""
    prefix, delimiter = _prefix_and_delimiter(settings)

    def walk(model: type[BaseModel], name: str, defaults: BaseModel | None) -> Iterator[Setting]:
        for key, field in model.model_fields.items():
            env = f"{name}{key.upper()}"
            required = field.is_required()
            default = None if required else field.get_default(call_default_factory=True)
            if defaults is not None:
                default = getattr(defaults, key)
            description = field.description or ""
            sub = _model_of(field.annotation)
            if sub is None:
                yield Setting(env, field.annotation, default, required, description)
                continue
            yield Setting(
                f"{env}{delimiter}", field.annotation, default, required, description, True
            )
            yield from walk(sub, f"{env}{delimiter}", default if isinstance(default, sub) else None)

    yield from walk(settings, prefix, None)


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The BaseModel in ``annotation`` (``M`` or ``M | None``), if any."""
    candidates = typing.get_args(annotation) or (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None
