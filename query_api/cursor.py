"""Opaque paging cursors (pure): base64url JSON that names its kind and the query it belongs to.

A cursor is not a secret and carries no authority: everything in it is validated again when it
comes back, and it only moves the start of a page of a query the caller may run anyway. The
``fingerprint`` binds it to the parameters that shape the result (a cursor of one query given
to another is refused rather than silently skipping or repeating points).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Final

import orjson

from telemetry_common.errors import TelemetryError

MAX_CURSOR_CHARS: Final = 4096


class CursorError(TelemetryError, ValueError):
    """A cursor that is not one of ours, or not for this query."""


def fingerprint(*parts: object) -> str:
    """A short stable digest of the parameters a cursor is valid for."""
    text = orjson.dumps([str(p) if p is not None else None for p in parts])
    return hashlib.sha256(text).hexdigest()[:16]


def encode(kind: str, query: str, body: dict[str, Any]) -> str:
    raw = orjson.dumps({"k": kind, "q": query, **body})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str, kind: str, query: str) -> dict[str, Any]:
    """The body of ``text``; :class:`CursorError` if it is malformed, of another kind or query."""
    if len(text) > MAX_CURSOR_CHARS:
        raise CursorError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise CursorError("not a cursor of this API") from exc
    if not isinstance(body, dict) or body.get("k") != kind:
        raise CursorError("not a cursor of this endpoint")
    if body.get("q") != query:
        raise CursorError("the cursor belongs to a query with other parameters")
    return body
