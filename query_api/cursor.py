"""Opaque paging cursors (pure): base64url JSON that names its kind and the query it belongs to,
signed by the API.

A cursor carries no authority: everything in it is validated again when it comes back, and it
only moves the start of a page of a query the caller may run anyway. The ``fingerprint`` binds
it to the parameters that shape the result (a cursor of one query given to another is refused
rather than silently skipping or repeating points). The body is signed (HMAC-SHA256, a 16-byte
tag) with a key the API holds (``TELEMETRY_API_CURSOR_SECRET``, else a random key per process),
so a client cannot write a cursor of its own: the route still checks what the body says.

Wire form: ``base64url(json) "." base64url(tag)``, without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Final

import orjson

from telemetry_common.errors import TelemetryError

MAX_CURSOR_CHARS: Final = 4096
TAG_BYTES: Final = 16
MIN_KEY_BYTES: Final = 16


class CursorError(TelemetryError, ValueError):
    """A cursor that is not one of ours, or not for this query."""


def fingerprint(*parts: object) -> str:
    """A short stable digest of the parameters a cursor is valid for."""
    text = orjson.dumps([str(p) if p is not None else None for p in parts])
    return hashlib.sha256(text).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cursors:
    """Writes and reads the cursors of one API process, signed with ``key`` (built once in
    ``create_app``; processes that share a key accept each other's cursors)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a cursor key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def _tag(self, encoded: bytes) -> bytes:
        return hmac.new(self._key, encoded, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, kind: str, query: str, body: dict[str, Any]) -> str:
        encoded = _b64(orjson.dumps({"k": kind, "q": query, **body})).encode()
        return f"{encoded.decode()}.{_b64(self._tag(encoded))}"

    def decode(self, text: str, kind: str, query: str) -> dict[str, Any]:
        """The body of ``text``; :class:`CursorError` if it is malformed, not signed with our
        key, of another kind or of another query."""
        if len(text) > MAX_CURSOR_CHARS:
            raise CursorError("cursor too long")
        encoded, dot, tag = text.partition(".")
        if not dot or not encoded or not encoded.isascii() or not tag.isascii():
            raise CursorError("not a cursor of this API")
        # The tag is compared in its one canonical spelling; the body is read only once its tag
        # verifies.
        if not hmac.compare_digest(tag, _b64(self._tag(encoded.encode()))):
            raise CursorError("the cursor's signature does not verify")
        try:
            body = orjson.loads(_unb64(encoded))
        except (binascii.Error, ValueError) as exc:
            raise CursorError("not a cursor of this API") from exc
        if not isinstance(body, dict) or body.get("k") != kind:
            raise CursorError("not a cursor of this endpoint")
        if body.get("q") != query:
            raise CursorError("the cursor belongs to a query with other parameters")
        return body
