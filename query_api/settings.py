"""Settings of ``telemetry-api``, read from ``TELEMETRY_API_*`` (nested groups with ``__``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from query_api.cursor import MIN_KEY_BYTES
from query_api.resolution import Retentions
from telemetry_common.errors import ConfigError
from telemetry_common.ids import Id
from telemetry_common.settings import InfluxSettings, MqttSettings, ServiceSettings, env_name
from telemetry_common.topics import RESERVED_GATEWAY_IDS

Role = Literal["read", "ingest", "admin"]
ROLES: tuple[Role, ...] = ("read", "ingest", "admin")

#: Gateway ids an ingest key may not be bound to: topic levels and identities the ACL reserves.
RESERVED_INGEST_GATEWAYS = frozenset(
    {*RESERVED_GATEWAY_IDS, "telemetry-bridge", "telemetry-api", "ca", "server"}
)


class ApiSettings(ServiceSettings):
    """Everything ``create_app`` needs; built in ``__main__`` (or by a test) and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="TELEMETRY_API_", extra="ignore", env_nested_delimiter="__"
    )

    host: str = "127.0.0.1"
    """Address the API listens on."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Its port."""
    access_log: bool = False
    """uvicorn's per-request access log. Off by default: at thousands of requests per second it
    costs more CPU than a ``latest`` answer; ``/metrics`` counts every request by route, status
    and latency."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """A request's headers must arrive within this long (from the connection's start, or from
    the first byte of a request on a kept-alive connection): a client that trickles them
    (slowloris) gets 408 and is disconnected (query_api.receive)."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """... and then its body within this long (an HTTP ingest of INGEST's largest body on a
    slow link included): a body that stalls gets 408 and the connection is closed."""
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    """Where readings are read from (a read-only user or token is enough)."""
    keys: dict[Role, SecretStr] = Field(default_factory=dict)
    """Role -> key, JSON: ``{"read": "K1", "ingest": "K2", "admin": "K3"}``. Required: the API
    refuses to start without keys."""
    cursor_secret: SecretStr | None = None
    """Key that signs the paging cursors (``next_cursor``; HMAC-SHA256), at least 16 characters.
    Unset: a random key per process; cursors then do not survive an API restart and are not
    shared among API replicas (a client that brings one back gets 422 ``invalid-cursor`` and
    starts its paging again). Set it, the same in every process, where several API processes
    serve one address."""

    history_max_range: timedelta = Field(default=timedelta(days=1825), gt=timedelta(0))
    """Longest ``end - start`` a history query may span (default: ROLLUP_1H_RETENTION's)."""
    history_default_range: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))
    """Range used when a history query gives no ``start``."""
    history_max_points: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most points one history page may hold (the cap on ``limit``)."""
    history_default_limit: int | None = Field(default=None, ge=1)
    """``limit`` when the request gives none; unset: 1,000 or HISTORY_MAX_POINTS if lower."""
    history_cache_s: float = Field(default=5.0, ge=0)
    """How long a downsampled history page is reused (0: never); a page lags InfluxDB by at most
    this much."""
    history_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bound of the history page cache in all."""
    history_min_every: timedelta = Field(default=timedelta(seconds=1), gt=timedelta(0))
    """Smallest ``every`` of a downsampled history query."""
    stats_max_range: timedelta = Field(default=timedelta(days=1825), gt=timedelta(0))
    """Longest window of ``/stats`` (default: ROLLUP_1H_RETENTION's)."""
    raw_retention: timedelta = Field(default=timedelta(days=30), gt=timedelta(0))
    """How long raw readings are kept (the rollup job's RAW_RETENTION: keep them equal). A window
    that starts earlier is never read from raw readings."""
    rollup_1m_retention: timedelta = Field(default=timedelta(days=365), gt=timedelta(0))
    """How long 1-minute rollups are kept (the rollup job's setting of the same name)."""
    rollup_1h_retention: timedelta = Field(default=timedelta(days=1825), gt=timedelta(0))
    """How long 1-hour rollups are kept (the rollup job's setting of the same name)."""
    rollup_1m_after: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))
    """A history window longer than this (without ``every``) is read from 1-minute rollups."""
    rollup_1h_after: timedelta = Field(default=timedelta(days=31), gt=timedelta(0))
    """... and longer than this, from 1-hour rollups."""
    stats_default_range: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    """Window of ``/stats`` when the request gives none."""

    mqtt: MqttSettings | None = None
    """The broker (TLS, client certificate CN ``telemetry-api``). Unset: no live mirror (latest from
    InfluxDB only) and ``POST /v1/telemetry`` answers 503."""
    live_settle_s: float = Field(default=2.0, ge=0)
    """The bridge's TELEMETRY_BRIDGE_LIVE_INTERVAL_S plus a margin: a live value younger than this
    may have a newer reading waiting in the bridge's conflation, so InfluxDB is asked too."""
    latest_trust_s: float = Field(default=60.0, ge=0)
    """A mirrored value InfluxDB confirmed is served from memory this long, then checked again."""
    latest_sweep_s: float = Field(default=10.0, ge=0)
    """Every this often one InfluxDB query confirms the whole mirror (0: never; then each charger is
    confirmed by its own query once per LATEST_TRUST_S). Keep it well under LATEST_TRUST_S."""
    mirror_max_chargers: int = Field(default=1_000_000, ge=1)
    """Most chargers the mirror holds (beyond it, latest is read from InfluxDB)."""
    state_stale_after_s: float = Field(default=300.0, gt=0)
    """A charger whose newest reading is older than this is ``stale``."""
    state_offline_after_s: float = Field(default=3600.0, gt=0)
    """... and older than this, ``offline``."""
    chargers_cache_s: float = Field(default=10.0, ge=0)
    """How long the charger index (newest point per charger, from InfluxDB) is reused."""
    chargers_max_page: int = Field(default=1000, ge=1, le=100_000)
    """Most chargers one ``/v1/chargers`` page holds."""
    connectors_window: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    """``GET /v1/chargers/{id}`` lists the connectors with a reading within this window."""
    sessions_max_range: timedelta = Field(default=timedelta(days=400), gt=timedelta(0))
    """Longest ``end - start`` of ``/v1/chargers/{id}/sessions`` and ``/v1/sessions``."""
    sessions_cache_s: float = Field(default=5.0, ge=0)
    """How long an answer of ``/v1/chargers/{id}/sessions`` (same parameters, as given) is
    reused (0: never); the sessions job writes every ``TELEMETRY_SESSIONS_INTERVAL_S`` anyway.
    Bounded by ``HISTORY_CACHE_MAX_BYTES`` of its own."""
    sessions_max_page: int = Field(default=10_000, ge=1, le=100_000)
    """Most sessions one JSON page holds (the cap on ``limit``; a CSV export is streamed whole,
    whatever ``limit``)."""

    ingest_gateway: Id = "http-ingest"
    """The gateway identity under which readings sent with the ``ingest`` role key are published
    (``{root}/{gateway}/readings``). Dedicate it to HTTP ingest: the API numbers its ``seq``."""
    ingest_keys: dict[Id, SecretStr] = Field(default_factory=dict)
    """More ingest keys, each bound to its own gateway: JSON ``{"gateway_id": "key"}``."""
    ingest_seq_file: Path | None = None
    """Where the last ``seq`` used per ingest gateway is kept across restarts (JSON). Unset: the
    next seq is derived from InfluxDB at the first ingest after a start."""
    ingest_stored_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long ``POST /v1/telemetry`` waits, after publishing, for the bridges' stored
    acknowledgement of every reading; then it answers 503 (the readings may still be stored:
    retry with the same ``Idempotency-Key``). Keep it above the bridges' ACK_INTERVAL_S plus a
    write to InfluxDB, and above their number of gateways divided by ACK_MAX_RATE."""
    ingest_retry_after_s: int = Field(default=2, ge=0, le=3600)
    """The ``Retry-After`` (seconds) of ingest's 503 and 409 answers."""
    ingest_idempotency_ttl_s: float = Field(default=86_400.0, gt=0)
    """How long an ``Idempotency-Key`` of ``POST /v1/telemetry`` is remembered (a retry after that
    is a new request, with new seqs)."""
    ingest_idempotency_max_keys: int = Field(default=100_000, ge=1)
    """Most idempotency keys remembered (the oldest are forgotten first). With
    INGEST_SEQ_FILE they are journaled next to it (``<file>.keys``) and survive a restart."""
    ingest_max_future_s: float = Field(default=300.0, ge=0)
    """Readings stamped further ahead than this are refused (the bridge would dead-letter them)."""
    bindings: Literal["provisioned", "first-come"] = "provisioned"
    """The bridges' TELEMETRY_BRIDGE_BINDINGS: with ``first-come``, ``GET /v1/bindings`` also
    lists the bindings learned from the readings (where the bindings store names no charger)."""
    bindings_file: Path | None = None
    """The bridges' TELEMETRY_BRIDGE_BINDINGS_FILE (the same file, JSON ``{"charger_id":
    "gateway_id"}``, read at start): ``GET /v1/bindings`` lists its bindings with ``source``
    ``file`` where the bindings store names no charger (the store overrides the file, as on the
    bridges). A file that cannot work stops the API at start (exit 2)."""
    bridge_urls: list[AnyHttpUrl] = Field(default_factory=list)
    """Bridges whose ``/status`` is served merged on ``/v1/pipeline/status`` (JSON list)."""

    alarms: bool = True
    """Evaluate the alarms (docs/alarms.md) in this process: needs MQTT and write access to
    InfluxDB (measurement ``alarms``). Enable it on one replica only: two evaluators would each
    raise and clear every alarm."""
    alarm_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """How often the alarms are evaluated."""
    alarm_settle_s: float = Field(default=5.0, ge=0, le=600)
    """After the broker session comes up, how long retained state and alarms are given to arrive
    before the first evaluation (a gateway without a birth message is then ``gateway_offline``)."""
    alarm_silent_intervals: float = Field(default=3.0, gt=0)
    """``charger_silent``: a charger is silent after this many of its own reporting intervals
    (learned from its successive readings) without a reading, while its gateway is online."""
    alarm_silent_min_s: float = Field(default=60.0, gt=0)
    """... but never before this long (the floor); a charger whose interval is not learned yet
    waits STATE_STALE_AFTER_S."""
    alarm_backlog_s: float = Field(default=900.0, gt=0)
    """``edge_backlog``: raised when a gateway's oldest unsent reading is older than this (at the
    time of its state heartbeat)."""
    alarm_cert_days: float = Field(default=14.0, gt=0)
    """``certificate_expiry``: raised when a gateway's certificate expires within this many days."""
    alarm_deadletters_window_s: float = Field(default=900.0, gt=0)
    """``deadletters``: the window over which a gateway's stored dead letters are counted."""
    alarm_deadletters_min: int = Field(default=1, ge=1)
    """... raised at this many dead letters in the window, cleared below it."""
    alarm_lookback: timedelta = Field(default=timedelta(days=365), gt=timedelta(0))
    """How far back active alarms are loaded at start and ``/v1/alarms?state=active`` looks, and
    the longest window of ``/v1/alarms``."""
    pki_dir: Path | None = None
    """The PKI directory (``telemetry-stack pki init``) whose CA signs gateways' CSRs: set, it
    enables ``POST /v1/enrollment`` (one-time tokens of ``telemetry-stack pki token``) and
    ``POST /v1/enrollment/renew``; unset, both answer 404 (docs/deploy.md)."""
    enrollment_cert_days: float = Field(default=90.0, gt=0, le=825)
    """Lifetime of a certificate issued through the enrollment endpoints (the agents renew it
    ``TELEMETRY_EDGE_RENEW_BEFORE_DAYS`` before it expires); fractions of a day are allowed."""

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

    @field_validator("cursor_secret")
    @classmethod
    def _long_cursor_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"cursor_secret needs at least {MIN_KEY_BYTES} characters")
        return secret

    @field_validator("ingest_keys")
    @classmethod
    def _usable_ingest_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for gateway, key in keys.items():
            value = key.get_secret_value()
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"the ingest key of {gateway} is empty or contains white space")
        return keys

    @model_validator(mode="after")
    def _refuse_without_keys(self) -> ApiSettings:
        if not self.keys:
            raise ConfigError(
                env_name(ApiSettings, "keys"),
                "no API keys configured; the API refuses to start without them. Set it to JSON, "
                'e.g. {"read": "<key>", "ingest": "<key>", "admin": "<key>"}',
            )
        if (
            self.history_default_limit is not None
            and self.history_default_limit > self.history_max_points
        ):
            raise ConfigError(
                env_name(ApiSettings, "history_default_limit"),
                f"{self.history_default_limit} exceeds history_max_points "
                f"({self.history_max_points})",
            )
        if self.history_default_range > self.history_max_range:
            raise ConfigError(
                env_name(ApiSettings, "history_default_range"),
                f"exceeds {env_name(ApiSettings, 'history_max_range')}",
            )
        if self.stats_default_range > self.stats_max_range:
            raise ConfigError(
                env_name(ApiSettings, "stats_default_range"),
                f"exceeds {env_name(ApiSettings, 'stats_max_range')}",
            )
        if self.rollup_1m_after > self.rollup_1h_after:
            raise ConfigError(
                env_name(ApiSettings, "rollup_1m_after"),
                f"exceeds {env_name(ApiSettings, 'rollup_1h_after')}",
            )
        if self.state_stale_after_s >= self.state_offline_after_s:
            raise ConfigError(
                env_name(ApiSettings, "state_stale_after_s"),
                f"must be below {env_name(ApiSettings, 'state_offline_after_s')}",
            )
        all_keys = [k.get_secret_value() for k in (*self.keys.values(), *self.ingest_keys.values())]
        if len(set(all_keys)) != len(all_keys):
            raise ConfigError(env_name(ApiSettings, "ingest_keys"), "every key must be distinct")
        for gateway in (self.ingest_gateway, *self.ingest_keys):
            if gateway in RESERVED_INGEST_GATEWAYS:
                raise ConfigError(
                    env_name(ApiSettings, "ingest_gateway"), f"{gateway!r} is reserved"
                )
        return self

    @property
    def retentions(self) -> Retentions:
        """The stores' retentions and the window lengths that pick among them."""
        return Retentions(
            raw=self.raw_retention,
            rollup_1m=self.rollup_1m_retention,
            rollup_1h=self.rollup_1h_retention,
            rollup_1m_after=self.rollup_1m_after,
            rollup_1h_after=self.rollup_1h_after,
        )

    @property
    def default_limit(self) -> int:
        """The ``limit`` of a history request that gives none."""
        if self.history_default_limit is not None:
            return self.history_default_limit
        return min(1_000, self.history_max_points)
