"""Enrollment over HTTP: what ``POST /v1/enrollment`` and ``/v1/enrollment/renew`` do, outside
the route (the checks and the signing are :mod:`provisioning.enrollment`'s, the CA's own code).

Requests (docs/query-api.md#enrollment):

- ``POST /v1/enrollment``, ``Authorization: Bearer <one-time token>``, body the CSR (PEM, or
  JSON ``{"csr": PEM}``);
- ``POST /v1/enrollment/renew``, no token, JSON ``{"csr": PEM, "certificate": PEM,
  "signature": base64}``: ``signature`` is the current key's signature (ECDSA or RSA PKCS#1
  v1.5, SHA-256) over the new CSR's DER, which proves the caller holds the current key.

Both answer the certificate followed by the CA's (``application/x-pem-file``). Refusals are
problems: 400 a bad CSR, 401 an unknown / used / expired token, 403 a CN that is not the
token's or the current certificate's, a revoked / expired / foreign current certificate. Tokens
are never logged (neither are keys: none ever reaches the API).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from pathlib import Path
from typing import Final

import orjson

from provisioning import enrollment
from query_api.metrics import ApiMetrics
from query_api.problems import ProblemError
from telemetry_common.errors import ConfigError

log = logging.getLogger(__name__)

PEM_MEDIA_TYPE: Final = "application/x-pem-file"
#: The largest body accepted (413 beyond, unread): a CSR, a certificate and a signature are a
#: few KiB.
MAX_BODY: Final = 64 * 1024

_STATUS: Final = {
    enrollment.BadCsrError: (400, "bad-csr", "bad_csr"),
    enrollment.TokenError: (401, "bad-token", "bad_token"),
    enrollment.RefusedError: (403, "enrollment-refused", "refused"),
}


def _field(body: bytes, name: str, *, raw_ok: bool) -> bytes:
    """``body``'s JSON field ``name`` (or the whole body when it is PEM and ``raw_ok``)."""
    if raw_ok and body.lstrip().startswith(b"-----BEGIN"):
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        what = "a PEM CSR or JSON" if raw_ok else "JSON"
        raise enrollment.BadCsrError(f"the body is not {what}: {exc}") from exc
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise enrollment.BadCsrError(f"the JSON body has no string field {name!r}")
    return value.encode()


def bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise enrollment.TokenError("send the one-time token as 'Authorization: Bearer <token>'")
    return token.strip()


def _renew(pki_dir: Path, body: bytes, days: float) -> enrollment.Signed:
    csr = _field(body, "csr", raw_ok=False)
    cert = _field(body, "certificate", raw_ok=False)
    try:
        signature = base64.b64decode(_field(body, "signature", raw_ok=False), validate=True)
    except binascii.Error as exc:
        raise enrollment.BadCsrError(f"signature is not base64: {exc}") from exc
    return enrollment.renew(pki_dir, csr, cert, signature, days=days)


async def handle(
    kind: str,
    pki_dir: Path | None,
    body: bytes,
    authorization: str | None,
    days: float,
    metrics: ApiMetrics,
) -> bytes:
    """The certificate chain for an enrollment (``kind`` token) or renewal (``kind`` renew)
    request; every refusal is a :class:`ProblemError`, counted and logged."""
    if pki_dir is None:
        raise ProblemError(
            404, "enrollment-off", "enrollment is off: the API was started without a PKI_DIR"
        )
    try:
        if kind == "token":
            token = bearer(authorization)
            csr = _field(body, "csr", raw_ok=True)
            tokens = enrollment.Tokens(pki_dir)
            signed = await asyncio.to_thread(tokens.redeem, token, csr, days=days)
        else:
            signed = await asyncio.to_thread(_renew, pki_dir, body, days)
    except ConfigError as exc:  # the PKI directory lacks its CA: the operator's to fix
        metrics.enrollments.labels(kind, "unavailable").inc()
        log.error("enrollment (%s) impossible: %s", kind, exc)
        raise ProblemError(503, "enrollment-unavailable", f"the CA is not usable: {exc}") from exc
    except enrollment.EnrollmentError as exc:
        status, slug, outcome = _STATUS[type(exc)]
        metrics.enrollments.labels(kind, outcome).inc()
        log.warning("enrollment (%s) refused: %s", kind, exc.reason)
        raise ProblemError(status, slug, exc.reason) from exc
    metrics.enrollments.labels(kind, "signed").inc()
    log.info(
        "enrollment (%s): signed %s, serial %#x, not after %s",
        kind,
        signed.gateway_id,
        signed.cert.serial_number,
        signed.cert.not_valid_after_utc.isoformat(),
    )
    return signed.chain_pem
