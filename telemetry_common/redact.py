"""Public names for the secret-bearing ones: what logs and answers show instead.

The bridges' MQTT client id and share group carry a per-deployment secret
(``telemetry-bridge-N-<secret>``, ``processors-<secret>``; mosquitto/README.md): a gateway that
knew the share group could join it and make the broker drop readings. So neither name appears in
an API answer, an operational endpoint or a log line; :func:`public_name` shows the documented
part and replaces the rest by a short digest. The digest tells two deployments apart in the
logs; 32 bits of SHA-256 of a 128-bit secret cannot be turned back into it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

#: The documented, non-secret stems of the names: the share group and a bridge's client id.
_STEM: Final = re.compile(r"^(processors|telemetry-bridge-\d+)(?:-(.+))?$", re.DOTALL)


def digest(text: str) -> str:
    """A short, one-way tag of ``text`` (8 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


#: What :func:`public_name` returns (so applying it again changes nothing).
_PUBLIC: Final = re.compile(r"^(?:processors|telemetry-bridge-\d+)?(?:~[0-9a-f]{8})?$")


def public_name(name: str) -> str:
    """``telemetry-bridge-1-<secret>`` -> ``telemetry-bridge-1~1a2b3c4d``; ``processors-<secret>``
    -> ``processors~...``. The documented defaults (``telemetry-bridge-1``, ``processors``) are
    shown as they are (they are no secret, and the bridge warns about them); a name of another
    shape is shown only as ``~digest``. A public name is returned unchanged."""
    if name and _PUBLIC.match(name):
        return name
    match = _STEM.match(name)
    if match is None:
        return f"~{digest(name)}"
    stem, secret = match.groups()
    return stem if secret is None else f"{stem}~{digest(secret)}"


def redact(text: str, names: Iterable[str]) -> str:
    """``text`` with each of ``names`` replaced by its :func:`public_name` (longest first, so a
    name that contains another is replaced whole)."""
    for name in sorted((n for n in names if n), key=len, reverse=True):
        text = text.replace(name, public_name(name))
    return text
