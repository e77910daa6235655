"""Enrollment and renewal, the gateway's side: the key is made here and never leaves.

``edge-agent enroll --url URL --token TOKEN`` (:func:`enroll`) makes an EC P-256 key and a CSR
whose CN is the gateway id, posts the CSR to the API's ``POST /v1/enrollment`` with the one-time
token, and installs the certificate it gets back. :func:`renew` does the same against
``POST /v1/enrollment/renew``, proving possession of the current key by signing the new CSR's
DER with it (docs/query-api.md#enrollment); :mod:`edge_agent.renewal` runs it before expiry.
The new key is kept in ``KEY_FILE.pending`` (0600) until its certificate is installed: the CA
renews from a certificate once, so a renewal whose answer was lost is retried with the same key,
for which the CA hands back the certificate it already issued.

Installing a pair (:func:`install_pair`): the new key and certificate are first written whole
next to the old ones (``KEY_FILE.next``, ``CERT_FILE.next``), then moved over the key, then
over the certificate. A crash in between leaves a ``.next`` file that :func:`finish_install`
(run at every start) moves into place, so the files never stay a mismatched pair.

The URL must be https (verified against ``--ca-file`` or the system's CAs), or http to a
loopback address (a test, or a tunnel).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from telemetry_common.errors import TelemetryError
from telemetry_common.files import replace_durably, write_atomic

log = logging.getLogger(__name__)

ENROLL_PATH: Final = "/v1/enrollment"
RENEW_PATH: Final = "/v1/enrollment/renew"
TIMEOUT_S: Final = 30.0
_NEXT: Final = ".next"
_PENDING: Final = ".pending"


class EnrollError(TelemetryError):
    """Enrollment or renewal did not succeed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_pair` put in place."""

    serial: int
    not_after: str
    cert_file: Path
    key_file: Path


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str) -> bytes:
    """A CSR (PEM) with subject CN = ``gateway_id`` and nothing else (the CA sets the rest)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it is https, or http to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url.rstrip("/")
    raise EnrollError(
        f"refusing {url!r}: the enrollment URL must be https://HOST[:PORT] "
        "(plain http only to a loopback address)"
    )


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True  # the system's CAs
    if not Path(ca_file).is_file():
        raise EnrollError(f"--ca-file {ca_file} does not exist")
    return ssl.create_default_context(cafile=str(ca_file))


def _post(url: str, ca_file: Path | None, **kwargs: object) -> bytes:
    try:
        with httpx.Client(verify=_verify(ca_file), timeout=TIMEOUT_S) as client:
            response = client.post(url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        raise EnrollError(f"{url} did not answer ({type(exc).__name__}: {exc})") from exc
    if response.status_code == 200:
        return response.content
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text[:300]
    hint = {
        401: "ask the operator for a new token (`telemetry-stack pki token GATEWAY_ID`)",
        403: "check TELEMETRY_EDGE_GATEWAY_ID against the token / certificate",
        404: "is enrollment on? The API needs TELEMETRY_API_PKI_DIR",
    }.get(response.status_code, "")
    raise EnrollError(
        f"{url} refused ({response.status_code}): {detail}" + (f"; {hint}" if hint else "")
    )


def _leaf_and_ca(
    chain_pem: bytes, key: ec.EllipticCurvePrivateKey, gateway_id: str
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise EnrollError(f"the answer is not a PEM certificate chain: {exc}") from exc
    leaf, rest = certs[0], certs[1:]
    if leaf.public_key() != key.public_key():
        raise EnrollError("the certificate received is not for the key made here")
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(c.value) for c in cns] != [gateway_id]:
        raise EnrollError(f"the certificate received is not for gateway {gateway_id!r}")
    return leaf, rest


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _next(path: Path) -> Path:
    return path.with_name(path.name + _NEXT)


def install_pair(key: ec.EllipticCurvePrivateKey, leaf: x509.Certificate, cert_file: Path,
                 key_file: Path) -> Installed:  # fmt: skip
    """Write the new pair whole beside the old one, then move it into place (key first)."""
    for path in (cert_file, key_file):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(_next(key_file), _key_pem(key), 0o600)
    write_atomic(_next(cert_file), leaf.public_bytes(serialization.Encoding.PEM), 0o644)
    finish_install(cert_file, key_file)
    return Installed(leaf.serial_number, leaf.not_valid_after_utc.isoformat(), cert_file, key_file)


def finish_install(cert_file: Path, key_file: Path) -> bool:
    """Complete a pair install a crash interrupted (True if there was one): the ``.next`` key,
    then the ``.next`` certificate, replace the files."""
    key_next, cert_next = _next(key_file), _next(cert_file)
    if not cert_next.exists():
        key_next.unlink(missing_ok=True)  # the certificate never arrived: keep the old pair
        return False
    if key_next.exists():
        replace_durably(key_next, key_file)  # on disk before the certificate's move
    replace_durably(cert_next, cert_file)
    return True


def enroll(
    url: str,
    token: str,
    gateway_id: str,
    cert_file: Path,
    key_file: Path,
    *,
    ca_file: Path | None = None,
    mqtt_ca_file: Path | None = None,
) -> Installed:
    """Make a key and CSR, have the CSR signed with ``token``, install key + certificate; the
    CA certificate returned is written to ``mqtt_ca_file`` when that does not exist yet."""
    base = check_url(url)
    key = make_key()
    chain = _post(
        base + ENROLL_PATH,
        ca_file,
        content=make_csr(key, gateway_id),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-pem-file"},
    )
    leaf, cas = _leaf_and_ca(chain, key, gateway_id)
    installed = install_pair(key, leaf, cert_file, key_file)
    if mqtt_ca_file is not None and cas and not Path(mqtt_ca_file).exists():
        write_atomic(mqtt_ca_file, cas[0].public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("installed the CA certificate at %s", mqtt_ca_file)
    return installed


def renew(
    url: str, gateway_id: str, cert_file: Path, key_file: Path, *, ca_file: Path | None = None
) -> Installed:
    """Have a new key's CSR signed by proving possession of the current key; install the pair."""
    base = check_url(url)
    try:
        current_cert = Path(cert_file).read_bytes()
        current_key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise EnrollError(f"cannot read the current certificate and key: {exc}") from exc
    if not isinstance(current_key, ec.EllipticCurvePrivateKey):
        raise EnrollError(f"{key_file} is not an EC key: enrol again with a token")
    key = _pending_key(Path(key_file))
    csr = make_csr(key, gateway_id)
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    proof = current_key.sign(der, ec.ECDSA(hashes.SHA256()))
    chain = _post(
        base + RENEW_PATH,
        ca_file,
        json={
            "csr": csr.decode(),
            "certificate": current_cert.decode(),
            "signature": base64.b64encode(proof).decode(),
        },
    )
    leaf, _cas = _leaf_and_ca(chain, key, gateway_id)
    installed = install_pair(key, leaf, cert_file, key_file)
    _pending(Path(key_file)).unlink(missing_ok=True)
    return installed


def _pending(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + _PENDING)


def _pending_key(key_file: Path) -> ec.EllipticCurvePrivateKey:
    """The key of a renewal not installed yet (``KEY_FILE.pending``), else a new one kept there
    first: a retry asks for the same key's certificate."""
    pending = _pending(key_file)
    try:
        key = serialization.load_pem_private_key(pending.read_bytes(), None)
    except FileNotFoundError:
        key = None
    except ValueError:  # unreadable: a new one replaces it
        log.warning("%s is not a key: making a new one", pending)
        key = None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key
    key = make_key()
    write_atomic(pending, _key_pem(key), 0o600)
    return key
