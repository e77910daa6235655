"""The bridges' MQTT client id and share group of one deployment: unguessable, kept on disk.

Mosquitto's ACL file cannot refuse a SUBSCRIBE, nor tie a client id to a certificate. A gateway
that knew the share group could join it (the broker then hands it its turn of the readings,
refuses them at delivery and drops them, after the edge got its PUBACK), and one that knew a
bridge's client id could take over that bridge's persistent session the same way. So both names
carry a random part that only the operator's side holds (mosquitto/README.md, "What a gateway
cannot do"). The file keeps them across `up`/`down`: a new name would orphan the broker's
persistent session and the readings queued in it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from telemetry_common.topics import SHARE_GROUP

FILE_NAME: Final = "bridge-session.secret"
CLIENT_PREFIX: Final = "telemetry-bridge"


def _token(state_dir: Path) -> str:
    path = state_dir / FILE_NAME
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if len(token) < 16 or not token.isalnum():
        token = secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    return token


def bridge_names(state_dir: Path, index: int = 1) -> tuple[str, str]:
    """(client id of bridge ``index``, share group) for the deployment in ``state_dir``."""
    token = _token(state_dir)
    return f"{CLIENT_PREFIX}-{index}-{token}", f"{SHARE_GROUP}-{token}"
