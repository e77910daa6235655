"""The per-charger configuration file (``OcppSettings.chargers_file``, TOML).

    [defaults]                       # every charger not listed, and every key a charger omits
    security_profile = 2             # 0..3 towards the chargers (see docs/ocpp.md, Security)
    allow_unknown = false            # chargers not listed; default: only with profile 0
    upstream_url = "wss://csms.example.com/ocpp/{charger_id}"   # proxy mode
    upstream_ca_file = "/etc/edge/csms-ca.pem"                  # trust for wss:// upstream

    [chargers.CP-0001]
    password_hash = "scrypt$..."     # written by `edge-agent ocpp passwd CP-0001`
    upstream_password = "..."        # Basic auth towards the CSMS (profile 1/2 upstream)
    upstream_cert_file = "..."       # client certificate towards the CSMS (profile 3 upstream)
    upstream_key_file = "..."

The file is read whole (at start, and again when it changed): a syntax error (with its line),
an unknown key or a wrong value is a :class:`ConfigError` naming the file and the key, and
nothing of it is used.
Relative paths in it are relative to the file's directory.
"""

from __future__ import annotations

import base64
import logging
import ssl
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemetry_common.errors import ConfigError
from telemetry_common.ids import is_valid_id

log = logging.getLogger(__name__)

Profile = Literal[0, 1, 2, 3]


class _Entry(BaseModel):
    """Keys a charger's table and ``[defaults]`` share (None: not set here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    security_profile: Profile | None = None
    upstream_url: str | None = None
    upstream_ca_file: Path | None = None
    upstream_cert_file: Path | None = None
    upstream_key_file: Path | None = None

    @field_validator("upstream_url")
    @classmethod
    def _template(cls, url: str | None) -> str | None:
        if url is None:
            return None
        fields = {name for _, name, _, _ in string.Formatter().parse(url) if name is not None}
        if fields - {"charger_id"}:
            raise ValueError(f"only {{charger_id}} may be filled in, not {sorted(fields)}")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return url


class _Defaults(_Entry):
    allow_unknown: bool | None = None


class _Charger(_Entry):
    password_hash: str | None = None
    upstream_password: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _scrypt(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("scrypt$"):
            raise ValueError("not a hash from `edge-agent ocpp passwd` (scrypt$...)")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: _Defaults = Field(default_factory=_Defaults)
    chargers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], _Charger] = Field(
        default_factory=dict
    )


@dataclass(frozen=True, slots=True)
class Charger:
    """What applies to one charger, ``[defaults]`` filled in."""

    charger_id: str
    security_profile: int = 0
    password_hash: str | None = field(default=None, repr=False)
    upstream_url: str | None = None
    upstream_password: str | None = field(default=None, repr=False)
    upstream_ca_file: Path | None = None
    upstream_cert_file: Path | None = None
    upstream_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ChargersConfig:
    """The loaded file; :meth:`open` is the configuration without a file (today's behaviour:
    every charger, profile 0)."""

    path: Path | None
    defaults: _Defaults
    chargers: dict[str, _Charger]

    @classmethod
    def open(cls) -> ChargersConfig:
        return cls(None, _Defaults(), {})

    @property
    def default_profile(self) -> int:
        return self.defaults.security_profile or 0

    @property
    def allow_unknown(self) -> bool:
        """Chargers missing from the file may connect: by default only with profile 0."""
        if self.defaults.allow_unknown is not None:
            return self.defaults.allow_unknown
        return self.default_profile == 0

    def profiles(self) -> set[int]:
        """Every profile some charger may connect with."""
        found = {self.default_profile} if self.allow_unknown else set()
        for charger_id in self.chargers:
            charger = self.charger(charger_id)
            assert charger is not None
            found.add(charger.security_profile)
        return found

    def charger(self, charger_id: str) -> Charger | None:
        """What applies to ``charger_id``; None if it may not connect (not in the file and
        unknown chargers are not allowed)."""
        entry = self.chargers.get(charger_id)
        if entry is None and not self.allow_unknown:
            return None
        entry = entry or _Charger()
        d = self.defaults

        def pick(key: str) -> Any:
            own = getattr(entry, key)
            return own if own is not None else getattr(d, key)

        return Charger(
            charger_id=charger_id,
            security_profile=pick("security_profile") or 0,
            password_hash=entry.password_hash,
            upstream_url=pick("upstream_url"),
            upstream_password=entry.upstream_password,
            upstream_ca_file=self._path(pick("upstream_ca_file")),
            upstream_cert_file=self._path(pick("upstream_cert_file")),
            upstream_key_file=self._path(pick("upstream_key_file")),
        )

    def _path(self, value: Path | None) -> Path | None:
        if value is None or value.is_absolute() or self.path is None:
            return value
        return self.path.parent / value

    def upstream_url(self, charger_id: str) -> str | None:
        """The CSMS URL for ``charger_id`` (its own, else the ``[defaults]`` template filled
        in); None if the file sets none (the caller falls back to ``OcppSettings``)."""
        charger = self.charger(charger_id)
        if charger is None or charger.upstream_url is None:
            return None
        return charger.upstream_url.format(charger_id=charger_id)

    def sets_upstream_urls(self) -> bool:
        """Does the file give any charger an ``upstream_url`` (``[defaults]`` or its own)?"""
        return self.defaults.upstream_url is not None or any(
            c.upstream_url is not None for c in self.chargers.values()
        )

    def upstream_connect_kwargs(self, charger_id: str, url: str | None = None) -> dict[str, Any]:
        """``websockets.connect`` keyword arguments towards the CSMS for ``charger_id``: the
        Basic auth header (``charger_id:upstream_password``) and, for ``wss://``, a TLS context
        trusting ``upstream_ca_file`` (the system's CAs without one) with the client
        certificate ``upstream_cert_file``/``upstream_key_file`` if set. ``url``: the URL
        connected to when it does not come from this file (``OcppSettings.upstream_url``)."""
        charger = self.charger(charger_id)
        if charger is None:
            return {}
        kwargs: dict[str, Any] = {}
        if charger.upstream_password is not None:
            token = base64.b64encode(f"{charger_id}:{charger.upstream_password}".encode())
            kwargs["additional_headers"] = [("Authorization", "Basic " + token.decode())]
        url = self.upstream_url(charger_id) or url or ""
        if url.startswith("wss://") or charger.upstream_cert_file is not None:
            kwargs["ssl"] = _client_context(charger)
        return kwargs


def _client_context(charger: Charger) -> ssl.SSLContext:
    where = f"chargers.{charger.charger_id}"
    try:
        ctx = ssl.create_default_context(
            cafile=str(charger.upstream_ca_file) if charger.upstream_ca_file else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if charger.upstream_cert_file is not None:
            ctx.load_cert_chain(
                str(charger.upstream_cert_file),
                str(charger.upstream_key_file) if charger.upstream_key_file else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.upstream_*_file", str(exc)) from exc
    return ctx


def load_chargers(path: Path, *, complete: bool = True) -> ChargersConfig:
    """Read and check the whole file; :class:`ConfigError` naming the file and the key.
    ``complete``: also every listed charger with profile 1/2 has its password hash (at start;
    ``edge-agent ocpp passwd`` checks only the file's form)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("ocpp.chargers_file", f"cannot read {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("ocpp.chargers_file", f"{path}: not valid TOML: {exc}") from exc
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"{path}: [{where}]: {first['msg']} ({exc.error_count()} error(s) in all)"
        raise ConfigError("ocpp.chargers_file", problem) from exc
    config = ChargersConfig(path, parsed.defaults, dict(parsed.chargers))
    secrets = any(c.upstream_password is not None for c in config.chargers.values())
    if secrets and path.stat().st_mode & 0o077:
        log.warning(
            "ocpp: %s holds upstream passwords and others may read it: chmod 600 %s", path, path
        )
    for charger_id in config.chargers:
        assert is_valid_id(charger_id)
        _check_entry(config, charger_id, complete=complete)
    return config


def _check_entry(config: ChargersConfig, charger_id: str, *, complete: bool) -> None:
    charger = config.charger(charger_id)
    assert charger is not None
    where = f"{config.path}: [chargers.{charger_id}]"
    if complete and charger.security_profile in (1, 2) and charger.password_hash is None:
        raise ConfigError(
            "ocpp.chargers_file",
            f"{where}: security_profile {charger.security_profile} needs password_hash "
            f"(edge-agent ocpp passwd {charger_id})",
        )
    credentials = charger.upstream_password is not None or charger.upstream_cert_file is not None
    if complete and credentials and charger.security_profile == 0:
        log.warning(
            "ocpp: %s: the charger connects with security_profile 0 but its CSMS connection "
            "carries credentials: anyone on the site network who connects as %s while it is "
            "away gets that CSMS session; set security_profile = 1 or more if the charger can",
            where,
            charger_id,
        )
    if (charger.upstream_cert_file is None) != (charger.upstream_key_file is None):
        raise ConfigError(
            "ocpp.chargers_file", f"{where}: set upstream_cert_file and upstream_key_file together"
        )
