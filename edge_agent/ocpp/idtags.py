"""Id tags (the RFID card, app or plug-and-charge token a transaction was started with): they
leave the gateway only as a salted hash, and are never logged or stored.

- **The hash**: ``HMAC-SHA256(salt, idTag)``, its first 16 bytes in lowercase hex (the
  ``id_tag_hash`` of docs/design.md). OCPP's idTag is a case-insensitive string (CiString20), so
  the tag is upper-cased first: ``04a1b2`` and ``04A1B2`` are one card and one hash.
- **The salt**: the OCPP setting ``ID_TAG_SALT``. Set the same salt on every gateway of a fleet
  and one tag gives one hash fleet-wide (a driver's sessions can be followed across sites). Left
  unset, the gateway makes a random salt once and keeps it in a file beside its transaction
  state (``STATE_PATH`` with the suffix ``.salt``), so its hashes survive restarts; they are
  then comparable only with this gateway's own (a warning says so at start). A salt file that
  is not one this module wrote stops the OCPP source: silently making a new one would change
  every hash.
- **Never logged**: :func:`scrub` takes the tags out of any text about a request (a frame, a
  request's repr, a refusal's details) before it is logged or sent back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from telemetry_common.errors import ConfigError

log = logging.getLogger(__name__)

#: Payload keys whose values are id tags (camelCase as sent, snake_case as the library passes
#: them to handlers); 2.0.1's ``idToken`` is an object whose own ``idToken`` is the tag.
TAG_KEYS: Final = frozenset(
    {
        "idTag", "parentIdTag", "id_tag", "parent_id_tag",
        "idToken", "groupIdToken", "additionalIdToken",
        "id_token", "group_id_token", "additional_id_token",
    }
)  # fmt: skip
REDACTED: Final = "<idTag>"
HASH_BYTES: Final = 16
SALT_SUFFIX: Final = ".salt"
_SALT_FILE_RE: Final = re.compile(r"[0-9a-f]{64}")
#: A tag value after its key, in JSON (``"idTag": "X"``) or in a Python repr (``'idTag': 'X'``).
_TAG_VALUE_RE: Final = re.compile(
    r"""(['"](?:idTag|parentIdTag|id_tag|parent_id_tag|idToken|groupIdToken|additionalIdToken"""
    r"""|id_token|group_id_token|additional_id_token)['"]\s*:\s*)"""
    r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)


def hash_id_tag(salt: bytes, id_tag: str) -> str:
    """The ``id_tag_hash`` of ``id_tag``: 32 lowercase hex digits."""
    mac = hmac.new(salt, id_tag.upper().encode("utf-8"), hashlib.sha256)
    return mac.digest()[:HASH_BYTES].hex()


def salt_path(state_path: Path) -> Path:
    """Where a gateway keeps the salt it made itself: beside its transaction state."""
    return state_path.with_suffix(SALT_SUFFIX)


def gateway_salt(path: Path) -> bytes:
    """The salt kept at ``path``, made (64 random hex digits, file mode 0600) if there is none."""
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        text = secrets.token_hex(32)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(path.parent.resolve(), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("ocpp: made a new id-tag salt in %s", path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("ocpp.id_tag_salt", f"cannot read the salt file {path}: {exc}") from exc
    if not _SALT_FILE_RE.fullmatch(text):
        raise ConfigError(
            "ocpp.id_tag_salt",
            f"{path} is not a salt file (64 hex digits): delete it to make a new salt (the "
            "hashes of id tags then change) or set ID_TAG_SALT",
        )
    return text.encode("ascii")


def load_salt(configured: str | None, state_path: Path) -> bytes:
    """The salt to hash with: ``configured`` (the setting) if set, else the gateway's own."""
    if configured is not None:
        return configured.encode("utf-8")
    path = salt_path(state_path)
    salt = gateway_salt(path)
    log.warning(
        "ocpp: ID_TAG_SALT is not set: id tags are hashed with this gateway's own salt (%s), so "
        "their hashes compare only with this gateway's; set the same ID_TAG_SALT on every "
        "gateway to compare them fleet-wide",
        path,
    )
    return salt


def tags_in(payload: Any) -> set[str]:
    """Every id tag in a request payload (at any depth)."""
    found: set[str] = set()
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in TAG_KEYS and isinstance(value, str) and value:
                    found.add(value)
                else:
                    stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def scrub(text: str, tags: Iterable[str] = ()) -> str:
    """``text`` without id tags: the values of tag keys in JSON or repr form, and every
    occurrence of ``tags`` (the request's own, which may also appear in an error message)."""
    forms = {form for tag in tags for form in (tag, repr(tag)[1:-1], json.dumps(tag)[1:-1])}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return _TAG_VALUE_RE.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
