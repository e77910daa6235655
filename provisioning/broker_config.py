"""Renders ``mosquitto/mosquitto.conf.tmpl`` and ``mosquitto/acl.tmpl`` into a directory.

The rendered configuration has two TLS listeners (client certificate required, its CN is the
MQTT username): one for gateways, where the client id is replaced by the CN, and one for the
services, which trusts only the services CA; and a plaintext listener bound to 127.0.0.1 only.
See ``mosquitto/README.md``.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from provisioning.pki import API_IDENTITY, BRIDGE_IDENTITY, OPERATOR_IDENTITY, Pki
from telemetry_common.errors import ConfigError
from telemetry_common.topics import Topics

TEMPLATE_DIR: Final = Path(__file__).resolve().parent.parent / "mosquitto"

#: Per-client bound on queued QoS 1 messages (Mosquitto's default of 1000 drops silently).
MAX_QUEUED_MESSAGES: Final = 100_000
#: Per-client bound on queued bytes, whichever of the two bounds is reached first.
MAX_QUEUED_BYTES: Final = 256 * 1024 * 1024
#: Unacknowledged QoS 1 messages per client; the bridge's Receive Maximum must not exceed it.
MAX_INFLIGHT_MESSAGES: Final = 1_000
#: Unacknowledged QoS 1 bytes per client: what bounds the bridge's memory when messages are big
#: (1000 messages of 256 KiB would be 256 MiB), while small messages still get the full window.
MAX_INFLIGHT_BYTES: Final = 16 * 1024 * 1024
#: Whole MQTT packet: a 256 KiB ReadingBatch, or a dead letter carrying one in base64, fits.
MAX_PACKET_SIZE: Final = 512 * 1024
PERSISTENT_CLIENT_EXPIRATION: Final = "7d"


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The files :func:`render` wrote."""

    conf_file: Path
    acl_file: Path
    password_file: Path


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _path_value(setting: str, value: Path | str) -> str:
    text = str(value)
    if not text or any(c in text for c in "\r\n"):
        raise ConfigError(setting, f"{text!r} cannot be written into mosquitto.conf")
    return text


def _template(name: str, template_dir: Path) -> Template:
    path = template_dir / name
    if not path.is_file():
        raise ConfigError("mosquitto templates", f"{path} is missing")
    return Template(path.read_text(encoding="utf-8"))


def render_conf(
    *,
    cafile: Path | str,
    certfile: Path | str,
    keyfile: Path | str,
    acl_file: Path | str,
    password_file: Path | str,
    persistence_location: Path | str,
    tls_port: int,
    local_port: int,
    service_port: int,
    services_cafile: Path | str,
    services_crlfile: Path | str | None = None,
    bind_host: str = "127.0.0.1",
    run_as_user: str | None = None,
    template_dir: Path = TEMPLATE_DIR,
    crlfile: Path | str | None = None,
) -> str:
    """The text of mosquitto.conf. Paths are written as given (they may be container paths).

    ``tls_port`` is the gateways' listener, ``service_port`` the services' (trusting only
    ``services_cafile``). ``crlfile``: the CA's revocation list (``pki.crl_file``); the file must
    exist when Mosquitto starts, which ``pki.init`` guarantees."""
    ports = (("tls_port", tls_port), ("local_port", local_port), ("service_port", service_port))
    for setting, port in ports:
        if not 1 <= port <= 65535:
            raise ConfigError(setting, f"{port} is not a TCP port")
    if tls_port == local_port:
        raise ConfigError("local_port", "must differ from tls_port")
    if service_port in (tls_port, local_port):
        raise ConfigError("service_port", "must differ from tls_port and local_port")
    if not bind_host or any(c.isspace() for c in bind_host):
        raise ConfigError("bind_host", f"{bind_host!r} is not a host address")
    location = _path_value("persistence_location", persistence_location).rstrip("/") + "/"
    if run_as_user is None:
        user_directive = "# user: not set (Mosquitto started as root drops to user 'mosquitto')"
    else:
        if not run_as_user or any(c.isspace() for c in run_as_user):
            raise ConfigError("run_as_user", f"{run_as_user!r} is not a user name")
        user_directive = (
            "# Started as root, Mosquitto switches to this user; it must be able to read the\n"
            "# 0600 private keys, so it is the user that owns them.\n"
            f"user {run_as_user}"
        )
    if crlfile is None:
        crl_directive = "# crlfile: not set (no revocation list)"
    else:
        crl_directive = f"crlfile {_path_value('crlfile', crlfile)}"
    if services_crlfile is None:
        services_crl_directive = "# crlfile: not set (no revocation list)"
    else:
        services_crl_directive = f"crlfile {_path_value('services_crlfile', services_crlfile)}"
    return _template("mosquitto.conf.tmpl", template_dir).substitute(
        password_file=_path_value("password_file", password_file),
        acl_file=_path_value("acl_file", acl_file),
        user_directive=user_directive,
        persistence_location=location,
        max_queued_messages=MAX_QUEUED_MESSAGES,
        max_queued_bytes=MAX_QUEUED_BYTES,
        max_inflight_messages=MAX_INFLIGHT_MESSAGES,
        max_inflight_bytes=MAX_INFLIGHT_BYTES,
        max_packet_size=MAX_PACKET_SIZE,
        persistent_client_expiration=PERSISTENT_CLIENT_EXPIRATION,
        tls_port=tls_port,
        bind_host=bind_host,
        cafile=_path_value("cafile", cafile),
        certfile=_path_value("certfile", certfile),
        keyfile=_path_value("keyfile", keyfile),
        crl_directive=crl_directive,
        local_port=local_port,
        service_port=service_port,
        services_cafile=_path_value("services_cafile", services_cafile),
        services_crl_directive=services_crl_directive,
    )


def render_acl(topic_root: str, *, template_dir: Path = TEMPLATE_DIR) -> str:
    """The text of the ACL file for ``topic_root`` (validated as a topic root)."""
    root = Topics(topic_root).root
    return _template("acl.tmpl", template_dir).substitute(
        root=root,
        bridge_identity=BRIDGE_IDENTITY,
        operator_identity=OPERATOR_IDENTITY,
        api_identity=API_IDENTITY,
    )


def render(
    out_dir: Path,
    *,
    pki_dir: Path | str,
    tls_port: int,
    local_port: int,
    service_port: int,
    persistence_dir: Path | str,
    topic_root: str,
    bind_host: str = "127.0.0.1",
    run_as_user: str | None = None,
    config_dir: Path | str | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf, acl and an empty passwd into ``out_dir``.

    ``pki_dir``, ``persistence_dir`` and ``config_dir`` are the paths *as Mosquitto sees them*
    (``config_dir`` defaults to ``out_dir``; a container mounts ``out_dir`` elsewhere).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = Path(config_dir) if config_dir is not None else out_dir.resolve()
    pki = Path(pki_dir)
    acl_text = render_acl(topic_root)
    conf_text = render_conf(
        cafile=pki / "ca.crt",
        certfile=pki / "server.crt",
        keyfile=pki / "server.key",
        crlfile=Pki(pki).crl_file,
        services_cafile=Pki(pki).services_ca_file,
        services_crlfile=Pki(pki).services_crl_file,
        service_port=service_port,
        acl_file=seen / "acl",
        password_file=seen / "passwd",
        persistence_location=persistence_dir,
        tls_port=tls_port,
        local_port=local_port,
        bind_host=bind_host,
        run_as_user=run_as_user,
    )
    files = BrokerFiles(out_dir / "mosquitto.conf", out_dir / "acl", out_dir / "passwd")
    files.acl_file.write_text(acl_text, encoding="utf-8")
    files.password_file.write_text("", encoding="utf-8")
    files.conf_file.write_text(conf_text, encoding="utf-8")
    return files
