"""Settings of the OCPP source: ``TELEMETRY_EDGE_OCPP__*`` once nested into ``EdgeSettings``."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from telemetry_common.errors import ConfigError
from telemetry_common.settings import SettingsGroup

#: The salt must stay secret: with it, every plausible tag can be tried against the hashes.
MIN_SALT_BYTES = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OcppSettings(SettingsGroup):
    """The OCPP endpoint that the site's chargers connect to: a local 1.6J/2.0.1 central system
    (``MODE=local``) or a proxy to the operator's CSMS (``MODE=proxy``, docs/ocpp.md).

    Chargers use ``ws://HOST:PORT/<anything>/<charger_id>``. Off loopback the endpoint needs TLS
    (``CERT_FILE``/``KEY_FILE``: ``wss://``) or the explicit ``ALLOW_PLAINTEXT=true`` (OCPP
    security profile 0, for site networks that are already isolated).
    """

    mode: Literal["local", "proxy"] = "local"
    """``local``: the gateway is the chargers' central system (it answers everything itself).
    ``proxy``: every frame is relayed to the operator's CSMS at ``upstream_url`` and back, the
    telemetry tapped on the way; while the CSMS is unreachable transaction messages are queued
    on disk and replayed (docs/ocpp.md#proxy-mode)."""
    upstream_url: str | None = None
    """Proxy mode: the CSMS URL for a charger, ``{charger_id}`` replaced by its id, e.g.
    ``wss://csms.example.com/ocpp/{charger_id}``. The chargers file's ``upstream_url``
    (``[defaults]`` or the charger's own) takes precedence; proxy mode needs one of them."""
    upstream_open_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Proxy mode: how long a connection attempt to the CSMS may take."""
    upstream_response_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Proxy mode: how long a replayed message waits for the CSMS's answer before the
    connection is taken as lost (and the message replayed again later)."""
    upstream_retry_max_s: float = Field(default=60.0, ge=0.1, le=3600)
    """Proxy mode: the cap of the backoff between attempts to reach the CSMS (doubling from
    0.5 s, with jitter)."""
    offline_max_queued: int = Field(default=10_000, ge=1, le=10_000_000)
    """Proxy mode: transaction messages queued per charger while the CSMS is unreachable (on the
    disk the outbox shares; 10,000 is a day of MeterValues every 10 s); beyond it a message gets
    CALLERROR InternalError, so the charger keeps it and sends it again (its readings are still
    tapped)."""
    host: str = "127.0.0.1"
    """Address chargers connect to."""
    port: int = Field(default=9000, ge=0, le=65535)
    """Its port; 0 picks a free port (tests), real chargers need a fixed one."""
    cert_file: Path | None = None
    """TLS certificate: with ``key_file``, chargers use ``wss://``."""
    key_file: Path | None = None
    """Private key of ``cert_file``."""
    client_ca_file: Path | None = None
    """CA of the chargers' client certificates (security profile 3); needs ``cert_file``.
    Chargers of other profiles on the same port connect without a certificate."""
    chargers_file: Path | None = None
    """The per-charger TOML file: security profile, password hashes, upstream CSMS
    (docs/ocpp.md, Security); unset, every charger connects with profile 0."""
    ping_interval_s: int = Field(default=10, ge=1, le=300)
    """WebSocket ping interval and timeout: a charger whose connection died silently frees
    its id (a reconnect is refused while it is held) after at most twice this."""
    allow_plaintext: bool = False
    """Allow plain ``ws://`` off loopback (OCPP security profile 0, for site networks that are
    already isolated)."""
    heartbeat_interval_s: int = Field(default=300, ge=10, le=86_400)
    """The Heartbeat interval handed to chargers in the BootNotification answer."""
    state_path: Path = Path("edge-ocpp-state.json")
    """Where allocated transaction ids and open transactions are kept across restarts."""
    id_tag_salt: SecretStr | None = None
    """Secret salt of the id-tag hashes (HMAC-SHA256; at least 16 characters): id tags leave the
    gateway only as ``id_tag_hash``. Set the same salt on every gateway so one tag gives one hash
    fleet-wide; unset, the gateway makes its own (kept beside ``state_path``, suffix ``.salt``)
    and its hashes compare only with its own."""
    max_chargers: int = Field(default=100, ge=1, le=10_000)
    """Simultaneous charger connections; more are refused at the handshake (HTTP 503)."""
    max_message_bytes: int = Field(default=1024 * 1024, ge=4096, le=16 * 1024 * 1024)
    """Largest OCPP frame accepted (a bigger one closes that charger's connection, code 1009)."""
    max_pending: int = Field(default=1_000, ge=1, le=100_000)
    """OCPP requests waiting for the outbox; beyond it chargers wait for their answer."""

    @field_validator("id_tag_salt")
    @classmethod
    def _long_salt(cls, salt: SecretStr | None) -> SecretStr | None:
        if salt is not None and len(salt.get_secret_value().encode()) < MIN_SALT_BYTES:
            raise ValueError(f"id_tag_salt needs at least {MIN_SALT_BYTES} characters")
        return salt

    @model_validator(mode="after")
    def _secure_by_default(self) -> OcppSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("ocpp: set both cert_file and key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("ocpp: client_ca_file (profile 3) needs cert_file/key_file")
        if self.cert_file is None and not self.allow_plaintext and not is_loopback(self.host):
            raise ValueError(
                f"ocpp: host {self.host!r} is not loopback: set cert_file/key_file (wss://) "
                "or allow_plaintext=true"
            )
        if self.mode == "proxy" and self.upstream_url is None and self.chargers_file is None:
            raise ValueError(
                "ocpp: mode=proxy needs upstream_url (e.g. wss://csms/ocpp/{charger_id}) "
                "or a chargers_file with upstream_url"
            )
        self.upstream_url_for("CP-1")  # raises ValueError when malformed
        return self

    def upstream_url_for(self, charger_id: str) -> str | None:
        """The CSMS URL for ``charger_id`` from ``upstream_url`` (None: unset)."""
        if not self.upstream_url:
            return None
        if "{charger_id}" not in self.upstream_url:
            raise ValueError("ocpp: upstream_url must contain {charger_id}")
        url = self.upstream_url.replace("{charger_id}", charger_id)
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"ocpp: upstream_url {self.upstream_url!r} is not ws:// or wss://")
        return url

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context for ``wss://`` (TLS 1.2+), or None for plain ``ws://``."""
        if self.cert_file is None or self.key_file is None:
            return None
        files = [("ocpp.cert_file", self.cert_file), ("ocpp.key_file", self.key_file)]
        if self.client_ca_file is not None:
            files.append(("ocpp.client_ca_file", self.client_ca_file))
        for name, path in files:
            if not path.is_file():
                raise ConfigError(name, f"{path} does not exist")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.client_ca_file is not None:  # a certificate is checked if one is sent
            ctx.load_verify_locations(cafile=str(self.client_ca_file))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx
