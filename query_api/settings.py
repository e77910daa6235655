"""Settings of ``telemetry-api``, read from ``TELEMETRY_API_*`` (nested groups with ``__``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from telemetry_common.errors import ConfigError
from telemetry_common.settings import InfluxSettings, ServiceSettings

Role = Literal["read", "ingest", "admin"]
ROLES: tuple[Role, ...] = ("read", "ingest", "admin")

KEYS_ENV = "TELEMETRY_API_KEYS"


class ApiSettings(ServiceSettings):
    """Everything ``create_app`` needs; built in ``__main__`` (or by a test) and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="TELEMETRY_API_", extra="ignore", env_nested_delimiter="__"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    #: role -> key, from JSON: ``{"read": "K1", "ingest": "K2", "admin": "K3"}``.
    keys: dict[Role, SecretStr] = Field(default_factory=dict)

    #: Longest ``end - start`` a history query may span.
    history_max_range: timedelta = Field(default=timedelta(days=31), gt=timedelta(0))
    #: Range used when a history query gives no ``start``.
    history_default_range: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))
    #: Most points one history page may hold (the cap on ``limit``).
    history_max_points: int = Field(default=10_000, ge=1, le=1_000_000)
    #: ``limit`` when the request gives none; unset: 1,000 or history_max_points if lower.
    history_default_limit: int | None = Field(default=None, ge=1)
    #: Smallest ``every`` of a downsampled history query.
    history_min_every: timedelta = Field(default=timedelta(seconds=1), gt=timedelta(0))

    @field_validator("keys")
    @classmethod
    def _usable_keys(cls, keys: dict[Role, SecretStr]) -> dict[Role, SecretStr]:
        for role, key in keys.items():
            value = key.get_secret_value()
            if not value or value != value.strip() or any(c.isspace() for c in value):
                raise ValueError(f"the {role} key is empty or contains white space")
        values = [k.get_secret_value() for k in keys.values()]
        if len(set(values)) != len(values):
            raise ValueError("two roles share one key; give each role its own key")
        return keys

    @model_validator(mode="after")
    def _refuse_without_keys(self) -> ApiSettings:
        if not self.keys:
            raise ConfigError(
                KEYS_ENV,
                "no API keys configured; the API refuses to start without them. Set it to JSON, "
                'e.g. {"read": "<key>", "ingest": "<key>", "admin": "<key>"}',
            )
        if (
            self.history_default_limit is not None
            and self.history_default_limit > self.history_max_points
        ):
            raise ConfigError(
                "TELEMETRY_API_HISTORY_DEFAULT_LIMIT",
                f"{self.history_default_limit} exceeds history_max_points "
                f"({self.history_max_points})",
            )
        if self.history_default_range > self.history_max_range:
            raise ConfigError(
                "TELEMETRY_API_HISTORY_DEFAULT_RANGE", "exceeds TELEMETRY_API_HISTORY_MAX_RANGE"
            )
        return self

    @property
    def default_limit(self) -> int:
        """The ``limit`` of a history request that gives none."""
        if self.history_default_limit is not None:
            return self.history_default_limit
        return min(1_000, self.history_max_points)
