"""Enrollment: a gateway's key is made on the gateway; the CA signs its CSR after checking it.

Three ways in, one set of checks (:func:`check_csr`) and one signer (:func:`sign_csr`):

- ``telemetry-stack pki sign CSR --gateway ID`` (offline, the operator's own say-so);
- a one-time token (:class:`Tokens`) made by ``telemetry-stack pki token ID`` and redeemed once
  through the API's ``POST /v1/enrollment`` (:meth:`Tokens.redeem`);
- a renewal (:func:`renew`): the gateway proves possession of the key of its current
  certificate, which this CA issued, that is neither revoked nor expired, whose CN is the
  CSR's, and that is still the gateway's latest (``{pki}/{id}.crt``): a proof works once, an
  older certificate (renewed since, or left behind by a revocation of the latest) renews
  nothing. Signing holds a lock file (``{pki}/.sign.lock``), so of two renewals from one
  certificate exactly one signs.

Errors (all :class:`EnrollmentError`, each naming its reason)::

    EnrollmentError
    ├── BadCsrError      the CSR itself: unreadable, bad signature, wildcard, SANs, weak key
    ├── TokenError       unknown, used or expired token
    └── RefusedError     a well-formed request this CA will not sign: another gateway's CN,
                         a reserved id, a revoked / expired / foreign current certificate,
                         a failed proof of possession

Tokens live in ``{pki}/enrollment/`` as ``{sha256(token)}.json`` (gateway id and expiry; the
token itself is printed once and stored nowhere); redeeming renames the file to ``.used``,
which exactly one of two concurrent redeemers can do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import pki as pki_mod
from telemetry_common.errors import ConfigError, InvalidIdError, TelemetryError

#: Lifetime of an enrolled (renewable) certificate unless the caller says otherwise.
ENROLLED_DAYS: Final = 90.0
#: Lifetime of a token unless ``--ttl`` says otherwise.
TOKEN_TTL: Final = dt.timedelta(hours=24)
#: EC curves accepted in a CSR (P-256 and stronger).
_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS: Final = 2048
_TOKEN_DIR: Final = "enrollment"  # noqa: S105 - a directory name, not a secret
_SIGN_LOCK: Final = ".sign.lock"


class EnrollmentError(TelemetryError):
    """A refused enrollment; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadCsrError(EnrollmentError):
    """The CSR cannot be signed as it is (make a new one)."""


class TokenError(EnrollmentError):
    """The token is unknown, already used or expired (ask the operator for a new one)."""


class RefusedError(EnrollmentError):
    """The request is well formed but not this requester's to make."""


# --- checks ---------------------------------------------------------------------------------


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise BadCsrError(f"not a PEM certificate signing request: {exc}") from exc


def csr_cn(csr: x509.CertificateSigningRequest) -> str:
    """The CSR's single subject CN (BadCsrError without exactly one)."""
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise BadCsrError(f"the CSR's subject must have exactly one CN, it has {len(cns)}")
    value = cns[0].value
    return value if isinstance(value, str) else value.decode()


def check_csr(csr: x509.CertificateSigningRequest, gateway_id: str) -> None:
    """Raise unless the CA may sign ``csr`` for gateway ``gateway_id``: a valid signature, CN
    exactly ``gateway_id`` (an allowed, unreserved id), no wildcard, no extension at all (the
    CA sets its own: clientAuth, not a CA), an EC P-256+ or RSA >= 2048 key."""
    if not csr.is_signature_valid:
        raise BadCsrError("the CSR's signature does not verify (corrupted, or not self-signed)")
    cn = csr_cn(csr)
    if "*" in cn:
        raise BadCsrError(f"wildcard CN {cn!r} refused: the CN must be the gateway id")
    try:
        pki_mod.check_gateway_name(gateway_id)
    except InvalidIdError as exc:
        raise RefusedError(str(exc)) from exc
    if cn != gateway_id:
        raise RefusedError(f"the CSR's CN {cn!r} is not the gateway id {gateway_id!r}")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names = ", ".join(str(getattr(n, "value", n)) for n in sans)
        raise BadCsrError(f"subject alternative names refused ({names}): request the CN only")
    if len(csr.extensions):
        oids = ", ".join(e.oid.dotted_string for e in csr.extensions)
        raise BadCsrError(f"requested extensions refused ({oids}): the CA sets its own")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise BadCsrError(f"EC curve {key.curve.name} refused: use P-256, P-384 or P-521")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise BadCsrError(f"RSA key of {key.key_size} bits refused: use >= {_MIN_RSA_BITS}")
    else:
        raise BadCsrError(f"key type {type(key).__name__} refused: use EC P-256 or RSA >= 2048")


# --- signing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signed:
    """An issued certificate: its PEM followed by the CA's (the chain the gateway installs)."""

    gateway_id: str
    cert: x509.Certificate
    chain_pem: bytes
    cert_file: Path


@contextlib.contextmanager
def _signing(directory: Path) -> Iterator[None]:
    """Held while a gateway's latest certificate is read and replaced (threads and processes:
    the API's workers, ``pki sign``)."""
    fd = os.open(Path(directory) / _SIGN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sign_csr(directory: Path, csr_pem: bytes, gateway_id: str, *, days: float) -> Signed:
    """Check ``csr_pem`` for ``gateway_id`` and sign it for ``days``; the certificate is also
    written to ``{pki}/{gateway_id}.crt`` (what ``pki revoke`` revokes). A gateway key the
    operator's side still holds from ``pki gateway`` is deleted: the gateway's own key replaces
    it, and it must not pair with the new certificate."""
    with _signing(directory):
        return _sign(directory, csr_pem, gateway_id, days=days)


def _sign(directory: Path, csr_pem: bytes, gateway_id: str, *, days: float) -> Signed:
    if days <= 0:
        raise RefusedError(f"certificate lifetime must be positive, not {days} days")
    csr = load_csr(csr_pem)
    check_csr(csr, gateway_id)
    pki = pki_mod.Pki(Path(directory))
    ca_cert, ca_key = pki_mod.load_ca(pki)
    cert = pki_mod.sign_leaf(
        ca_cert,
        ca_key,
        gateway_id,
        csr.public_key(),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
        dt.timedelta(days=days),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    crt, key = pki.client_paths(gateway_id)
    key.unlink(missing_ok=True)
    pki_mod.write_public(crt, cert_pem)
    return Signed(gateway_id, cert, cert_pem + pki.ca_file.read_bytes(), crt)


# --- one-time tokens ------------------------------------------------------------------------


_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """``30m``, ``24h``, ``7d``, ``90s`` as a duration (ValueError otherwise)."""
    match = _TTL.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"invalid duration {text!r}: a positive number and s, m, h or d (24h)")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Tokens:
    """The one-time enrollment tokens of a PKI directory."""

    pki_dir: Path

    @property
    def dir(self) -> Path:
        return Path(self.pki_dir) / _TOKEN_DIR

    def create(self, gateway_id: str, ttl: dt.timedelta = TOKEN_TTL) -> str:
        """A new token for ``gateway_id``, valid for ``ttl``; only its hash is stored."""
        pki_mod.check_gateway_name(gateway_id)
        if not pki_mod.Pki(Path(self.pki_dir)).ca_file.is_file():
            raise RefusedError(f"no CA in {self.pki_dir} (run `telemetry-stack pki init` first)")
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self._prune()
        token = secrets.token_urlsafe(32)
        expires = dt.datetime.now(dt.UTC) + ttl
        record = {"gateway_id": gateway_id, "expires": expires.isoformat()}
        pki_mod.write_private(self.dir / f"{_digest(token)}.json", json.dumps(record).encode())
        return token

    def _prune(self) -> None:
        """Forget tokens that expired (a used one is kept as ``.used`` for its message for as
        long as it would have been valid)."""
        now = dt.datetime.now(dt.UTC)
        for path in [*self.dir.glob("*.json"), *self.dir.glob("*.used")]:
            try:
                expires = dt.datetime.fromisoformat(json.loads(path.read_bytes())["expires"])
            except (OSError, ValueError, KeyError):
                continue
            if expires <= now:
                path.unlink(missing_ok=True)

    def redeem(self, token: str, csr_pem: bytes, *, days: float) -> Signed:
        """Sign ``csr_pem`` if ``token`` is valid and names the CSR's CN; the token is used up
        only by a signature (a refused CSR leaves it valid), and by exactly one redeemer."""
        digest = _digest(token)
        path = self.dir / f"{digest}.json"
        used = self.dir / f"{digest}.used"
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            if used.exists():
                raise TokenError("this token was already used: ask for a new one") from None
            raise TokenError("unknown token: ask the operator for one") from None
        if dt.datetime.fromisoformat(record["expires"]) <= dt.datetime.now(dt.UTC):
            path.unlink(missing_ok=True)
            raise TokenError("this token has expired: ask the operator for a new one")
        csr = load_csr(csr_pem)
        check_csr(csr, record["gateway_id"])
        pki_mod.load_ca(pki_mod.Pki(Path(self.pki_dir)))  # a CA that cannot sign burns no token
        try:
            os.rename(path, used)  # the one atomic step that decides who redeems it
        except FileNotFoundError:
            raise TokenError("this token was already used: ask for a new one") from None
        return sign_csr(self.pki_dir, csr_pem, record["gateway_id"], days=days)


# --- renewal --------------------------------------------------------------------------------


def renew(
    directory: Path, csr_pem: bytes, cert_pem: bytes, signature: bytes, *, days: float
) -> Signed:
    """Sign ``csr_pem`` (a new key) for the holder of ``cert_pem``'s key: ``signature`` is that
    key's signature over the CSR's DER (ECDSA / RSA PKCS#1 v1.5 with SHA-256). The current
    certificate must be this CA's, not revoked, not expired, with the CSR's CN, and the
    gateway's latest; the same CSR again after that (a retry) gets the certificate issued for
    it, unless it is revoked."""
    pki = pki_mod.Pki(Path(directory))
    try:
        current = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise BadCsrError(f"the current certificate is not PEM: {exc}") from exc
    ca_cert, _key = pki_mod.load_ca(pki)
    try:
        current.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise RefusedError("the current certificate was not issued by this CA") from exc
    if current.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise RefusedError(
            f"the current certificate expired at {current.not_valid_after_utc.isoformat()}: "
            "enrol again with a token (`telemetry-stack pki token ID`)"
        )
    crl = pki_mod.load_crl(pki, ca_cert)
    if crl is None:  # fail closed: no CRL is not "nothing revoked"
        raise ConfigError(
            "pki",
            f"{pki.crl_file} is missing, unreadable or not signed by the CA: renewal cannot "
            "tell what is revoked (restore the crl from a backup)",
        )
    if crl.get_revoked_certificate_by_serial_number(current.serial_number):
        raise RefusedError(
            f"the current certificate (serial {current.serial_number:#x}) is revoked"
        )
    cns = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise RefusedError("the current certificate has no single CN")
    gateway_id = str(cns[0].value)
    csr = load_csr(csr_pem)
    check_csr(csr, gateway_id)
    _verify_possession(current, csr.public_bytes(serialization.Encoding.DER), signature)
    with _signing(directory):
        latest_file = pki.client_paths(gateway_id)[0]
        try:
            latest = pki_mod.load_cert(latest_file)
        except (OSError, ValueError):
            latest = None
        if latest is not None and latest.serial_number == current.serial_number:
            return _sign(directory, csr_pem, gateway_id, days=days)
        if latest is not None and latest.public_key() == csr.public_key():
            # The same renewal again (its answer was lost): the certificate already issued.
            if crl.get_revoked_certificate_by_serial_number(latest.serial_number):
                raise RefusedError(f"the certificate (serial {latest.serial_number:#x}) is revoked")
            cert_pem = latest.public_bytes(serialization.Encoding.PEM)
            return Signed(gateway_id, latest, cert_pem + pki.ca_file.read_bytes(), latest_file)
        raise RefusedError(
            f"the current certificate (serial {current.serial_number:#x}) was superseded by a "
            "newer one for this gateway: renew with the newest, or enrol again with a token "
            "(`telemetry-stack pki token ID`)"
        )


def _verify_possession(current: x509.Certificate, data: bytes, signature: bytes) -> None:
    key = current.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise RefusedError(f"key type {type(key).__name__} of the current certificate")
    except InvalidSignature as exc:
        raise RefusedError(
            "the signature over the CSR is not made by the current certificate's key"
        ) from exc
