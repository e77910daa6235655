"""TLS contexts for MQTT clients: TLS 1.2 or newer, the server verified against our CA."""

from __future__ import annotations

import ssl
from pathlib import Path

from telemetry_common.errors import ConfigError


def client_context(ca_file: Path, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the broker and presents our certificate (if given)."""
    for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(name, f"{path} does not exist (create it with `telemetry-stack pki`)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx
